package broker

import (
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"telematics/pkg/cmdline"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// Config is the broker's configuration. The standalone binary reads it with LoadConfig
// (defaults, then the YAML file, then the environment, then flags); the gateway embeds a broker
// with a Config of its own. The YAML keys are the field tags:
//
//	mqtt_addr: "127.0.0.1:1883"      # MQTT over TCP; off disables it
//	ws_addr: "127.0.0.1:1882"        # MQTT over WebSocket; off disables it
//	tls_mqtt_addr: "127.0.0.1:8883"  # MQTT over TLS (with tls_cert); off disables it
//	tls_ws_addr: "127.0.0.1:8884"    # MQTT over secure WebSocket (with tls_cert); off disables it
//	tls_cert: ""                     # PEM certificate chain of the TLS listeners
//	tls_key: ""                      # its PEM private key (0600)
//	client_ca: ""                    # PEM CA whose client certificates are accepted (requested, not required)
//	allow_plaintext: false           # plain-text listeners on non-loopback addresses
//	gateway_pubkeys: [gateway.pub]   # PEM public keys whose tokens are trusted (standalone only)
//	state_file: ""                   # retired car tokens kept across restarts (standalone only)
//	max_packet_bytes: 65536          # largest MQTT packet accepted, CONNECT included
//	max_topic_bytes: 256             # longer topics and filters are denied
//	max_conns_per_identity: 4        # live sessions per app user
//	max_client_writes_pending: 128  # outbound queue per client, in packets
//	max_clients: 0                   # connected clients; 0 means no limit
//	connect_timeout: 10s             # time a new connection has to send CONNECT
//	session_expiry: 1h               # how long a disconnected persistent session is kept
//
// In a Config, "" (or "off") is a disabled listener; LoadConfig turns the user's "off" into ""
// and refuses an empty address, which used to mean the default in some places.
type Config struct {
	MQTTAddr       string   `yaml:"mqtt_addr"`
	WSAddr         string   `yaml:"ws_addr"`
	GatewayPubKeys []string `yaml:"gateway_pubkeys"`
	// TLSMQTTAddr and TLSWSAddr are MQTT over TLS and over secure WebSocket. They open only
	// with a certificate: TLS, or TLSCert and TLSKey.
	TLSMQTTAddr string `yaml:"tls_mqtt_addr"`
	TLSWSAddr   string `yaml:"tls_ws_addr"`
	// TLSCert and TLSKey are the PEM certificate chain and private key (0600) of the TLS
	// listeners; ClientCA, when set, the PEM CA certificates whose client certificates a
	// listener accepts (requested, never required). Reload reads them again.
	TLSCert  string `yaml:"tls_cert"`
	TLSKey   string `yaml:"tls_key"`
	ClientCA string `yaml:"client_ca"`
	// AllowPlaintext lets MQTTAddr and WSAddr listen on addresses other than loopback, where
	// tokens would cross the network readable (tlsconf.CheckPlaintext).
	AllowPlaintext bool `yaml:"allow_plaintext"`
	// TLS, when set, is the TLS listeners' configuration in place of TLSCert and TLSKey: the
	// embedded broker's, which the gateway owns and reloads.
	TLS *tls.Config `yaml:"-"`
	// StateFile is where the standalone broker keeps what must survive its restart: which car
	// tokens the gateway retired (FollowCarTokens). "" keeps nothing: after a restart the
	// broker admits retired tokens again until the gateway reconnects and names them.
	StateFile string `yaml:"state_file"`

	// MaxPacketBytes bounds every packet a client sends, checked on the fixed header before
	// anything is allocated, so an unauthenticated client cannot make the broker allocate
	// more. It is larger than protocol.MaxPayloadBytes so that an oversized message reaches
	// the gateway and is answered with bad_request instead of a dropped connection.
	MaxPacketBytes int `yaml:"max_packet_bytes"`
	// MaxTopicBytes bounds topic names and subscription filters.
	MaxTopicBytes int `yaml:"max_topic_bytes"`
	// MaxConnsPerIdentity bounds the live sessions of one app user (a user with several
	// phones, or one reconnecting). A vehicle has exactly one session: its client id is its
	// VIN, and a second connect takes the first over.
	MaxConnsPerIdentity int `yaml:"max_conns_per_identity"`
	// MaxClientWritesPending is the outbound queue of each client. mochi allocates it per
	// connection, 8 bytes a slot (its default 8192 is what makes an idle connection cost about
	// 80 KB) and drops deliveries, QoS 1 included, when it is full. The gateway's own
	// subscriber is the inline client, which has no such queue, and behind the standalone
	// broker GatewayDeliveryHook writes what would not fit; a car gets a command at a time and
	// its whitelist, an app its user's replies: 128 is far more than either has pending.
	MaxClientWritesPending int `yaml:"max_client_writes_pending"`
	// MaxClients bounds the connected clients; 0 means no limit.
	MaxClients int `yaml:"max_clients"`
	// ConnectTimeout is how long a new connection may take to send its CONNECT packet; it
	// stops idle sockets from holding descriptors. Afterwards the client's keepalive applies.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// SessionExpiry is how long the broker keeps the session (subscriptions) of a
	// disconnected client that asked for a persistent one. Nothing is delivered to a session
	// while its client is away (see ACLHook).
	SessionExpiry time.Duration `yaml:"session_expiry"`
}

// Defaults.
const (
	DefaultMQTTAddr               = "127.0.0.1:1883"
	DefaultWSAddr                 = "127.0.0.1:1882"
	DefaultTLSMQTTAddr            = "127.0.0.1:8883"
	DefaultTLSWSAddr              = "127.0.0.1:8884"
	DefaultMaxPacketBytes         = 64 * 1024
	DefaultMaxTopicBytes          = 256
	DefaultMaxConnsPerIdentity    = 4
	DefaultMaxClientWritesPending = 128
	DefaultConnectTimeout         = 10 * time.Second
	DefaultSessionExpiry          = time.Hour
)

// Some of the environment variables read by LoadConfig: every key has one, BROKER_ and the key
// in upper case. BROKER_GATEWAY_PUBKEY takes a comma-separated list of PEM files. Set to off,
// BROKER_MQTT_ADDR or BROKER_WS_ADDR disable a listener.
const (
	EnvMQTTAddr      = "BROKER_MQTT_ADDR"
	EnvWSAddr        = "BROKER_WS_ADDR"
	EnvGatewayPubKey = "BROKER_GATEWAY_PUBKEY"
	EnvStateFile     = "BROKER_STATE_FILE"
)

// minTopicBytes is the longest topic of the contract: an app reply topic of the longest user
// name. A smaller MaxTopicBytes would lock legitimate clients out.
var minTopicBytes = len(protocol.AppTopic(strings.Repeat("u", 64), protocol.SuffixReply))

// maxMQTTPacketBytes is the largest packet MQTT can describe (a 4-byte remaining length).
const maxMQTTPacketBytes = 268_435_455

// ErrNoGatewayKey means the standalone broker was given no gateway public key: without one it
// could admit nobody.
var ErrNoGatewayKey = errors.New("no gateway public key: give --gateway-pubkey FILE (the PEM " +
	"public key the gateway writes to its data directory), " + EnvGatewayPubKey + " or gateway_pubkeys in the config file")

// DefaultConfig returns the configuration used when nothing is set.
func DefaultConfig() Config {
	return Config{
		MQTTAddr:               DefaultMQTTAddr,
		WSAddr:                 DefaultWSAddr,
		TLSMQTTAddr:            DefaultTLSMQTTAddr,
		TLSWSAddr:              DefaultTLSWSAddr,
		MaxPacketBytes:         DefaultMaxPacketBytes,
		MaxTopicBytes:          DefaultMaxTopicBytes,
		MaxConnsPerIdentity:    DefaultMaxConnsPerIdentity,
		MaxClientWritesPending: DefaultMaxClientWritesPending,
		ConnectTimeout:         DefaultConnectTimeout,
		SessionExpiry:          DefaultSessionExpiry,
	}
}

// Validate reports every problem of c at once, each naming its key.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(key, addr string) {
		if addr == "" || addr == cmdline.Off {
			return
		}
		if _, port, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port: %v", addr, err)
		} else if port == "" {
			bad(key, "%q has no port", addr)
		}
	}
	checkAddr("mqtt_addr", c.MQTTAddr)
	checkAddr("ws_addr", c.WSAddr)
	checkAddr("tls_mqtt_addr", c.TLSMQTTAddr)
	checkAddr("tls_ws_addr", c.TLSWSAddr)
	if c.MQTTAddr != "" && c.MQTTAddr != cmdline.Off && c.MQTTAddr == c.WSAddr && !strings.HasSuffix(c.MQTTAddr, ":0") {
		bad("ws_addr", "%q is also mqtt_addr", c.WSAddr)
	}
	if on(c.TLSMQTTAddr) && c.TLSMQTTAddr == c.TLSWSAddr && !strings.HasSuffix(c.TLSMQTTAddr, ":0") {
		bad("tls_ws_addr", "%q is also tls_mqtt_addr", c.TLSWSAddr)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls_cert", "tls_cert and tls_key go together: give both (--tls-cert, --tls-key) or neither")
	}
	if c.ClientCA != "" && c.TLSCert == "" && c.TLS == nil {
		bad("client_ca", "needs tls_cert and tls_key: client certificates travel over TLS only")
	}
	for _, l := range []struct{ key, addr string }{{"mqtt_addr", c.MQTTAddr}, {"ws_addr", c.WSAddr}} {
		if on(l.addr) {
			if err := tlsconf.CheckPlaintext(l.key, l.addr, c.AllowPlaintext); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for i, p := range c.GatewayPubKeys {
		if strings.TrimSpace(p) == "" {
			bad("gateway_pubkeys", "entry %d is empty", i)
		}
	}
	if c.MaxPacketBytes < protocol.MaxPayloadBytes || c.MaxPacketBytes > maxMQTTPacketBytes {
		bad("max_packet_bytes", "%d is outside [%d, %d]: every message of the protocol must fit",
			c.MaxPacketBytes, protocol.MaxPayloadBytes, maxMQTTPacketBytes)
	}
	if c.MaxTopicBytes < minTopicBytes || c.MaxTopicBytes > math.MaxUint16 {
		bad("max_topic_bytes", "%d is outside [%d, %d]: every topic of the protocol must fit",
			c.MaxTopicBytes, minTopicBytes, math.MaxUint16)
	}
	if c.MaxConnsPerIdentity < 1 {
		bad("max_conns_per_identity", "%d must be at least 1", c.MaxConnsPerIdentity)
	}
	if c.MaxClientWritesPending < 1 || c.MaxClientWritesPending > math.MaxInt32 {
		bad("max_client_writes_pending", "%d must be at least 1", c.MaxClientWritesPending)
	}
	if c.MaxClients < 0 {
		bad("max_clients", "%d must be 0 (no limit) or more", c.MaxClients)
	}
	if c.ConnectTimeout <= 0 {
		bad("connect_timeout", "%s must be positive", c.ConnectTimeout)
	}
	if c.SessionExpiry < 0 || c.SessionExpiry > math.MaxUint32*time.Second {
		bad("session_expiry", "%s must be between 0 and %d seconds", c.SessionExpiry, uint32(math.MaxUint32))
	}
	return errors.Join(errs...)
}

// on reports whether a listener address is set (not "", not off).
func on(addr string) bool { return addr != "" && addr != cmdline.Off }

// settingFlags are the standalone broker's flags, one per key: the key with dashes
// (--max-clients for max_clients), except gateway_pubkeys, --gateway-pubkey (repeated).
var settingFlags = []cmdline.ConfigFlag{
	{Key: "mqtt_addr", Usage: "MQTT over TCP listen `address`, or off"},
	{Key: "ws_addr", Usage: "MQTT over WebSocket listen `address`, or off"},
	{Key: "tls_mqtt_addr", Usage: "MQTT over TLS listen `address` (with --tls-cert), or off"},
	{Key: "tls_ws_addr", Usage: "MQTT over secure WebSocket listen `address` (with --tls-cert), or off"},
	{Key: "tls_cert", Usage: "PEM certificate chain `file` of the TLS listeners"},
	{Key: "tls_key", Usage: "PEM private key `file` of --tls-cert (mode 0600)"},
	{Key: "client_ca", Usage: "PEM CA `file` whose client certificates the TLS listeners accept (requested, not required)"},
	{Key: "allow_plaintext", Usage: "let mqtt_addr and ws_addr listen on non-loopback addresses (only behind a TLS proxy or on a private network)"},
	{Key: "gateway_pubkeys", Flag: "gateway-pubkey", Usage: "PEM public key `file` of the gateway whose tokens are trusted; repeat it during a key rotation (the variable takes a comma-separated list)"},
	{Key: "state_file", Usage: "`file` that keeps the retired car tokens across restarts (written 0600); none when empty"},
	{Key: "max_packet_bytes", Usage: "largest MQTT packet accepted, CONNECT included, in `bytes`"},
	{Key: "max_topic_bytes", Usage: "longest topic name or filter, in `bytes`"},
	{Key: "max_conns_per_identity", Usage: "live sessions one app user may hold"},
	{Key: "max_client_writes_pending", Usage: "outbound queue of each client, in `packets`"},
	{Key: "max_clients", Usage: "most connected clients; 0: no limit"},
	{Key: "connect_timeout", Usage: "how long a new connection may take to send CONNECT"},
	{Key: "session_expiry", Usage: "how long a disconnected persistent session is kept"},
}

// AddFlags defines the standalone broker's flags on fs: --config FILE and one flag per
// setting, whose help shows the default.
func AddFlags(fs *pflag.FlagSet) {
	fs.String("config", "", "YAML configuration `file` (configs/broker.yaml lists every key)")
	def := DefaultConfig()
	cmdline.AddConfigFlags(fs, &def, settingFlags...)
}

// LoadConfig builds the standalone broker's configuration: DefaultConfig(), then the YAML file
// named by --config (strict: an unknown key, a bad value or a bad indentation is an error
// naming the key and its line), then the environment (environ, os.Environ() normally: BROKER_
// and the key in upper case, BROKER_MAX_CLIENTS for max_clients, and BROKER_GATEWAY_PUBKEY, a
// comma-separated list), then the flags of fs (AddFlags) that were given. A listener address
// is HOST:PORT or "off", which disables it (the Config then holds ""); an empty one is refused.
// It returns a validated Config that names at least one gateway key, else ErrNoGatewayKey.
func LoadConfig(fs *pflag.FlagSet, environ []string) (Config, error) {
	cfg := DefaultConfig()
	if path, _ := fs.GetString("config"); path != "" {
		if err := cmdline.LoadFile(path, &cfg); err != nil {
			return Config{}, err
		}
	}
	if err := cmdline.ApplyEnv("BROKER", &cfg, environ); err != nil {
		return Config{}, err
	}
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, EnvGatewayPubKey+"="); ok {
			cfg.GatewayPubKeys = splitList(v)
		}
	}
	if err := cmdline.ApplyFlags(fs, &cfg, settingFlags...); err != nil {
		return Config{}, err
	}

	var errs []error
	for _, a := range []struct {
		key  string
		addr *string
	}{{"mqtt_addr", &cfg.MQTTAddr}, {"ws_addr", &cfg.WSAddr}, {"tls_mqtt_addr", &cfg.TLSMQTTAddr}, {"tls_ws_addr", &cfg.TLSWSAddr}} {
		name := fmt.Sprintf("%s (--%s, %s)", a.key, strings.ReplaceAll(a.key, "_", "-"), cmdline.EnvName("BROKER", a.key))
		addr, _, err := cmdline.Addr(name, *a.addr)
		if err != nil {
			errs = append(errs, err)
		}
		*a.addr = addr
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("invalid broker configuration:\n%w", err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("invalid broker configuration:\n%w", err)
	}
	if len(cfg.GatewayPubKeys) == 0 {
		return Config{}, ErrNoGatewayKey
	}
	return cfg, nil
}

// LoadKeys reads the gateway's PEM public keys (sign.PublicPEM format). It returns
// ErrNoGatewayKey when paths is empty.
func LoadKeys(paths []string) ([]*ecdsa.PublicKey, error) {
	if len(paths) == 0 {
		return nil, ErrNoGatewayKey
	}
	keys := make([]*ecdsa.PublicKey, 0, len(paths))
	for _, p := range paths {
		k, err := sign.LoadPublicPEM(p)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
