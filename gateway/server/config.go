package server

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/commands"
	"telematics/gateway/console"
	"telematics/gateway/twofa"
	"telematics/pkg/broker"
	"telematics/pkg/cmdline"
	"telematics/pkg/tlsconf"
)

// Config is every setting of `gateway serve`. Order of precedence: DefaultConfig, then the
// YAML file, then GATEWAY_* environment variables, then flags. configs/gateway.yaml documents
// every key with its default.
type Config struct {
	// Data is the directory of the bbolt file, the signing key, the admin token and the
	// public key the standalone broker reads.
	Data string `yaml:"data" env:"GATEWAY_DATA"`
	// Store is where the gateway keeps its state: "" (DATA/gateway.db), bbolt://PATH, or
	// etcd://HOST:PORT[,HOST:PORT...] for replicas that share it (see StoreURL).
	Store string `yaml:"store" env:"GATEWAY_STORE"`
	// StorePrefix is the key prefix of the gateway's state on etcd.
	StorePrefix string `yaml:"store_prefix" env:"GATEWAY_STORE_PREFIX"`
	// PublicDir, when set, is a second directory the gateway writes its public keys to
	// (gateway.pub, and gateway.prev.pub while a rotation is under way): what a standalone
	// broker needs, without the secrets of the data directory.
	PublicDir string `yaml:"public_dir" env:"GATEWAY_PUBLIC_DIR"`
	// AdminTokenFile holds the admin API's bearer token (0600, made on first start); "" means
	// DATA/admin.token. `gateway admin` reads the same variable.
	AdminTokenFile string `yaml:"admin_token_file" env:"GATEWAY_ADMIN_TOKEN_FILE"`
	// MQTTAddr and WSAddr are the embedded broker's plain-text listeners ("" disables one).
	MQTTAddr string `yaml:"mqtt_addr" env:"GATEWAY_MQTT_ADDR"`
	WSAddr   string `yaml:"ws_addr" env:"GATEWAY_WS_ADDR"`
	// HTTPAddr serves health, login and the admin API in plain text ("" disables it).
	HTTPAddr string `yaml:"http_addr" env:"GATEWAY_HTTP_ADDR"`
	// AllowPlaintext lets the plain-text listeners (MQTTAddr, WSAddr, HTTPAddr) and a tcp://
	// ExternalBroker use addresses other than loopback. Off, such a configuration is refused:
	// tokens, passwords and commands would cross the network readable.
	AllowPlaintext bool `yaml:"allow_plaintext" env:"GATEWAY_ALLOW_PLAINTEXT"`
	// TLS is the TLS listeners and their certificates.
	TLS TLSConfig `yaml:"tls"`
	// ExternalBroker, when set (tcp://HOST:PORT, or ssl://HOST:PORT with TLS), replaces the
	// embedded broker.
	ExternalBroker string `yaml:"external_broker" env:"GATEWAY_EXTERNAL_BROKER"`
	// ExternalBrokerCAFile is the PEM CA the gateway verifies an ssl:// ExternalBroker with
	// ("": the CA of the gateway's own TLS certificate, else the system's roots).
	ExternalBrokerCAFile string `yaml:"external_broker_ca_file" env:"GATEWAY_EXTERNAL_BROKER_CA_FILE"`
	// ExternalBrokerPassword, when set, is the gateway's MQTT password on the external broker
	// (username "gateway"), for brokers that do not verify the gateway's tokens, such as
	// mosquitto with a password file. Empty: the gateway presents a token it signs itself.
	ExternalBrokerPassword string `yaml:"external_broker_password" env:"GATEWAY_EXTERNAL_BROKER_PASSWORD"`
	// AdvertiseMQTTURL is the broker address apps are told at login; default derived from
	// MQTTAddr (or ExternalBroker).
	AdvertiseMQTTURL string `yaml:"advertise_mqtt_url" env:"GATEWAY_ADVERTISE_MQTT_URL"`
	// AdminAllowRemote lets the admin API answer requests from non-loopback addresses (it
	// always needs the admin token).
	AdminAllowRemote bool `yaml:"admin_allow_remote" env:"GATEWAY_ADMIN_ALLOW_REMOTE"`
	// AppTokenTTL and VehicleTokenTTL are the lifetimes of issued access tokens.
	AppTokenTTL     time.Duration `yaml:"app_token_ttl" env:"GATEWAY_APP_TOKEN_TTL"`
	VehicleTokenTTL time.Duration `yaml:"vehicle_token_ttl" env:"GATEWAY_VEHICLE_TOKEN_TTL"`
	// PasswordHashConcurrency bounds the argon2id hashes (logins, new users) computed at once,
	// each holding 19 MiB while it runs (0: one per CPU); PasswordHashWait is how long a login
	// waits for a turn before it is refused with rate_limited.
	PasswordHashConcurrency int           `yaml:"password_hash_concurrency" env:"GATEWAY_PASSWORD_HASH_CONCURRENCY"`
	PasswordHashWait        time.Duration `yaml:"password_hash_wait" env:"GATEWAY_PASSWORD_HASH_WAIT"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level" env:"GATEWAY_LOG_LEVEL"`

	Commands CommandsConfig `yaml:"commands"`
	Broker   BrokerConfig   `yaml:"broker"`
	TwoFA    twofa.Policy   `yaml:"twofa"`
	Login    LoginConfig    `yaml:"login"`
	Audit    AuditConfig    `yaml:"audit"`
	Console  ConsoleConfig  `yaml:"console"`
	// TwoFAKeyFile holds the AES-256 key that seals TOTP secrets at rest (base64, 0600; made
	// on first start). GATEWAY_TWOFA_KEY (base64) replaces the file.
	TwoFAKeyFile string `yaml:"twofa_key_file" env:"GATEWAY_TWOFA_KEY_FILE"`
}

// TLSConfig is the gateway's TLS: MQTT over TLS, MQTT over secure WebSocket and HTTPS, with
// either the files named here or, when CertFile is "", a local CA and server certificate the
// gateway makes in its data directory (ca.pem, ca.key, server.pem, server.key). SIGHUP reads
// the files again. Every listener takes TLS 1.2 at least, AEAD cipher suites only.
type TLSConfig struct {
	// MQTTAddr, WSAddr and HTTPAddr are the TLS listeners ("" disables one).
	MQTTAddr string `yaml:"mqtt_addr" env:"GATEWAY_TLS_MQTT_ADDR"`
	WSAddr   string `yaml:"ws_addr" env:"GATEWAY_TLS_WS_ADDR"`
	HTTPAddr string `yaml:"http_addr" env:"GATEWAY_TLS_HTTP_ADDR"`
	// CertFile and KeyFile (PEM, the key 0600) replace the local CA's server certificate.
	CertFile string `yaml:"cert_file" env:"GATEWAY_TLS_CERT_FILE"`
	KeyFile  string `yaml:"key_file" env:"GATEWAY_TLS_KEY_FILE"`
	// CAFile is the PEM CA certificate that clients are handed to verify the gateway (a car's
	// credentials, DATA/ca.pem); with the local CA it is that CA.
	CAFile string `yaml:"ca_file" env:"GATEWAY_TLS_CA_FILE"`
	// ClientCAFile, when set, is the PEM CA whose client certificates the listeners request
	// (and verify when given; never required).
	ClientCAFile string `yaml:"client_ca_file" env:"GATEWAY_TLS_CLIENT_CA_FILE"`
	// Hosts are the names and addresses the local server certificate covers besides
	// localhost, 127.0.0.1, ::1 and the listeners' own hosts.
	Hosts []string `yaml:"hosts" env:"GATEWAY_TLS_HOSTS"`
}

// on reports whether any TLS listener is configured.
func (t TLSConfig) on() bool { return t.MQTTAddr != "" || t.WSAddr != "" || t.HTTPAddr != "" }

// CommandsConfig tunes the command path.
type CommandsConfig struct {
	RatePerMinute     float64       `yaml:"rate_per_minute" env:"GATEWAY_RATE_PER_MINUTE"`
	RateBurst         int           `yaml:"rate_burst" env:"GATEWAY_RATE_BURST"`
	ResultGrace       time.Duration `yaml:"result_grace" env:"GATEWAY_RESULT_GRACE"`
	Shards            int           `yaml:"shards" env:"GATEWAY_COMMAND_SHARDS"`
	TwinFlushInterval time.Duration `yaml:"twin_flush_interval" env:"GATEWAY_TWIN_FLUSH_INTERVAL"`
}

// LoginConfig limits password logins per client address.
type LoginConfig struct {
	// PerIPRatePerMinute and PerIPBurst are a token bucket per client address (IPv6: per /64)
	// that every login attempt takes from and a successful one gives back: an address that
	// sends PerIPBurst failed logins is refused rate_limited until the bucket refills.
	// PerIPRatePerMinute 0 turns the limit off.
	PerIPRatePerMinute float64 `yaml:"per_ip_rate_per_minute" env:"GATEWAY_LOGIN_PER_IP_RATE_PER_MINUTE"`
	PerIPBurst         int     `yaml:"per_ip_burst" env:"GATEWAY_LOGIN_PER_IP_BURST"`
}

// AuditConfig is the audit log's retention.
type AuditConfig struct {
	Retention audit.Retention `yaml:"retention"`
}

// ConsoleConfig is the operator console's sessions and alert thresholds (console.Config).
type ConsoleConfig struct {
	// IdleTimeout ends a session not used for this long; AbsoluteTimeout ends it this long
	// after login, used or not.
	IdleTimeout     time.Duration `yaml:"idle_timeout" env:"GATEWAY_CONSOLE_IDLE_TIMEOUT"`
	AbsoluteTimeout time.Duration `yaml:"absolute_timeout" env:"GATEWAY_CONSOLE_ABSOLUTE_TIMEOUT"`
	// AlertRevocationAfter: a car that has not acknowledged its whitelist (a revocation) for
	// this long is an alert. AlertTelemetryAfter: an online car without telemetry for this
	// long is an alert. AlertFailureBurst: this many 2FA failures (all users) within a minute
	// are an alert.
	AlertRevocationAfter time.Duration `yaml:"alert_revocation_after" env:"GATEWAY_CONSOLE_ALERT_REVOCATION_AFTER"`
	AlertTelemetryAfter  time.Duration `yaml:"alert_telemetry_after" env:"GATEWAY_CONSOLE_ALERT_TELEMETRY_AFTER"`
	AlertFailureBurst    int           `yaml:"alert_failure_burst" env:"GATEWAY_CONSOLE_ALERT_FAILURE_BURST"`
}

// config is the console.Config these settings make; the rest are the console's defaults.
func (c ConsoleConfig) config() console.Config {
	cc := console.DefaultConfig()
	cc.IdleTimeout, cc.AbsoluteTimeout = c.IdleTimeout, c.AbsoluteTimeout
	cc.AlertRevocationAfter, cc.AlertTelemetryAfter = c.AlertRevocationAfter, c.AlertTelemetryAfter
	cc.AlertFailureBurst = c.AlertFailureBurst
	return cc
}

// BrokerConfig tunes the embedded broker.
type BrokerConfig struct {
	MaxPacketBytes         int `yaml:"max_packet_bytes" env:"GATEWAY_BROKER_MAX_PACKET_BYTES"`
	MaxTopicBytes          int `yaml:"max_topic_bytes" env:"GATEWAY_BROKER_MAX_TOPIC_BYTES"`
	MaxConnsPerIdentity    int `yaml:"max_conns_per_identity" env:"GATEWAY_BROKER_MAX_CONNS_PER_IDENTITY"`
	MaxClientWritesPending int `yaml:"max_client_writes_pending" env:"GATEWAY_BROKER_MAX_CLIENT_WRITES_PENDING"`
	MaxClients             int `yaml:"max_clients" env:"GATEWAY_BROKER_MAX_CLIENTS"`
}

// DefaultConfig returns the defaults documented in configs/gateway.yaml. The command path's
// and the embedded broker's numbers come from their packages, which own them.
func DefaultConfig() Config {
	rc, bc, cc := commands.DefaultConfig(), broker.DefaultConfig(), console.DefaultConfig()
	return Config{
		Data:        "./data",
		StorePrefix: "/telematics/",
		MQTTAddr:    bc.MQTTAddr,
		WSAddr:      bc.WSAddr,
		HTTPAddr:    "127.0.0.1:8080",
		TLS: TLSConfig{
			MQTTAddr: bc.TLSMQTTAddr,
			WSAddr:   bc.TLSWSAddr,
			HTTPAddr: "127.0.0.1:8443",
			Hosts:    []string{},
		},
		AppTokenTTL:      time.Hour,
		VehicleTokenTTL:  365 * 24 * time.Hour,
		PasswordHashWait: 5 * time.Second,
		LogLevel:         "info",
		Commands: CommandsConfig{
			RatePerMinute:     rc.RatePerMinute,
			RateBurst:         rc.RateBurst,
			ResultGrace:       rc.ResultGrace,
			Shards:            rc.Shards,
			TwinFlushInterval: rc.TwinFlushInterval,
		},
		Broker: BrokerConfig{
			MaxPacketBytes:         bc.MaxPacketBytes,
			MaxTopicBytes:          bc.MaxTopicBytes,
			MaxConnsPerIdentity:    bc.MaxConnsPerIdentity,
			MaxClientWritesPending: bc.MaxClientWritesPending,
			MaxClients:             bc.MaxClients,
		},
		TwoFA: twofa.DefaultPolicy(),
		Login: LoginConfig{PerIPRatePerMinute: 10, PerIPBurst: 20},
		Audit: AuditConfig{Retention: audit.DefaultRetention()},
		Console: ConsoleConfig{
			IdleTimeout:          cc.IdleTimeout,
			AbsoluteTimeout:      cc.AbsoluteTimeout,
			AlertRevocationAfter: cc.AlertRevocationAfter,
			AlertTelemetryAfter:  cc.AlertTelemetryAfter,
			AlertFailureBurst:    cc.AlertFailureBurst,
		},
	}
}

// EnvPrefix starts the name of every variable of `gateway` (GATEWAY_DATA, GATEWAY_TWOFA_MODE).
const EnvPrefix = "GATEWAY"

// LoadFile overlays the YAML file at path on c. Unknown keys are an error, so a typo does not
// silently fall back to a default; errors name the key and its line.
func (c *Config) LoadFile(path string) error {
	return cmdline.LoadFile(path, c)
}

// LoadEnv overlays the GATEWAY_* variables that lookup finds on c (cmdline.ApplyEnv: the env
// tags, or GATEWAY_ and the key's path).
func (c *Config) LoadEnv(lookup func(string) (string, bool)) error {
	var environ []string
	for _, name := range cmdline.EnvVars(EnvPrefix, c) {
		if v, ok := lookup(name); ok {
			environ = append(environ, name+"="+v)
		}
	}
	return cmdline.ApplyEnv(EnvPrefix, c, environ)
}

// Validate reports every problem at once, naming the key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.Data == "" {
		bad("data", "must name a directory")
	}
	if _, err := ParseStoreURL(c.Store); err != nil {
		bad("store", "%v", err)
	}
	if !strings.HasPrefix(c.StorePrefix, "/") || !strings.HasSuffix(c.StorePrefix, "/") {
		bad("store_prefix", "%q must start and end with /", c.StorePrefix)
	}
	checkAddr := func(key, addr string, optional bool) {
		if addr == "" {
			if !optional {
				bad(key, "must be host:port")
			}
			return
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(key, "%q is not host:port: %v", addr, err)
		}
	}
	checkAddr("http_addr", c.HTTPAddr, true)
	checkAddr("tls.http_addr", c.TLS.HTTPAddr, true)
	if c.HTTPAddr == "" && c.TLS.HTTPAddr == "" {
		bad("http_addr", "no HTTP listener: set http_addr or tls.http_addr")
	}
	plain := []struct{ key, addr string }{{"http_addr", c.HTTPAddr}}
	if c.ExternalBroker == "" {
		checkAddr("mqtt_addr", c.MQTTAddr, true)
		checkAddr("ws_addr", c.WSAddr, true)
		checkAddr("tls.mqtt_addr", c.TLS.MQTTAddr, true)
		checkAddr("tls.ws_addr", c.TLS.WSAddr, true)
		if c.MQTTAddr == "" && c.TLS.MQTTAddr == "" {
			bad("mqtt_addr", "no MQTT listener: set mqtt_addr or tls.mqtt_addr")
		}
		plain = append(plain, struct{ key, addr string }{"mqtt_addr", c.MQTTAddr}, struct{ key, addr string }{"ws_addr", c.WSAddr})
	} else if u, err := url.Parse(c.ExternalBroker); err != nil || !externalSchemes[u.Scheme] || u.Host == "" {
		bad("external_broker", "%q must look like tcp://HOST:PORT or ssl://HOST:PORT", c.ExternalBroker)
	} else if !tlsconf.SecureScheme(u.Scheme) {
		plain = append(plain, struct{ key, addr string }{"external_broker", u.Host})
	}
	for _, p := range plain {
		if err := tlsconf.CheckPlaintext(p.key, p.addr, c.AllowPlaintext); err != nil {
			errs = append(errs, err)
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls.cert_file", "tls.cert_file and tls.key_file go together: give both or neither (neither: the gateway makes its own CA)")
	}
	if c.AdvertiseMQTTURL != "" {
		if u, err := url.Parse(c.AdvertiseMQTTURL); err != nil || u.Host == "" {
			bad("advertise_mqtt_url", "%q is not a URL like tcp://HOST:PORT", c.AdvertiseMQTTURL)
		}
	}
	if c.AppTokenTTL < time.Minute {
		bad("app_token_ttl", "must be at least 1m, got %v", c.AppTokenTTL)
	}
	if c.VehicleTokenTTL < time.Hour {
		bad("vehicle_token_ttl", "must be at least 1h, got %v", c.VehicleTokenTTL)
	}
	if c.PasswordHashConcurrency < 0 {
		bad("password_hash_concurrency", "must be 0 (one per CPU) or more, got %d", c.PasswordHashConcurrency)
	}
	if c.PasswordHashWait <= 0 {
		bad("password_hash_wait", "must be positive, got %v", c.PasswordHashWait)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.Commands.RatePerMinute < 0 {
		bad("commands.rate_per_minute", "must not be negative")
	}
	if c.Commands.RateBurst < 1 {
		bad("commands.rate_burst", "must be at least 1")
	}
	if c.Commands.Shards < 1 || c.Commands.Shards > 4096 {
		bad("commands.shards", "must be 1..4096")
	}
	if c.Commands.ResultGrace < 0 || c.Commands.ResultGrace > 30*time.Second {
		bad("commands.result_grace", "must be 0..30s")
	}
	if c.Commands.TwinFlushInterval < 10*time.Millisecond {
		bad("commands.twin_flush_interval", "must be at least 10ms")
	}
	if c.Broker.MaxPacketBytes < 1024 {
		bad("broker.max_packet_bytes", "must be at least 1024")
	}
	if c.Broker.MaxTopicBytes < 64 {
		bad("broker.max_topic_bytes", "must be at least 64")
	}
	if c.Broker.MaxConnsPerIdentity < 1 {
		bad("broker.max_conns_per_identity", "must be at least 1")
	}
	if c.Broker.MaxClientWritesPending < 16 {
		bad("broker.max_client_writes_pending", "must be at least 16")
	}
	if err := c.TwoFA.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Login.PerIPRatePerMinute < 0 {
		bad("login.per_ip_rate_per_minute", "must not be negative (0 turns the limit off)")
	}
	if c.Login.PerIPRatePerMinute > 0 && c.Login.PerIPBurst < 1 {
		bad("login.per_ip_burst", "must be at least 1")
	}
	if err := c.Audit.Retention.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"console.idle_timeout", c.Console.IdleTimeout},
		{"console.absolute_timeout", c.Console.AbsoluteTimeout},
		{"console.alert_revocation_after", c.Console.AlertRevocationAfter},
		{"console.alert_telemetry_after", c.Console.AlertTelemetryAfter},
	} {
		if d.v <= 0 {
			bad(d.key, "must be positive, got %v", d.v)
		}
	}
	if c.Console.IdleTimeout > 0 && c.Console.AbsoluteTimeout > 0 && c.Console.AbsoluteTimeout < c.Console.IdleTimeout {
		bad("console.absolute_timeout", "must be at least console.idle_timeout (%v), got %v", c.Console.IdleTimeout, c.Console.AbsoluteTimeout)
	}
	if c.Console.AlertFailureBurst < 1 {
		bad("console.alert_failure_burst", "must be at least 1, got %d", c.Console.AlertFailureBurst)
	}
	return errors.Join(errs...)
}

// externalSchemes are the URL schemes of an external broker.
var externalSchemes = map[string]bool{"tcp": true, "mqtt": true, "ws": true, "ssl": true, "tls": true, "mqtts": true, "wss": true}

// advertisedMQTT is the broker URL apps are told at login: the plain listener's when there is
// one (loopback unless allow_plaintext), else the TLS listener's.
func (c *Config) advertisedMQTT(boundMQTT, boundTLS string) string {
	switch {
	case c.AdvertiseMQTTURL != "":
		return c.AdvertiseMQTTURL
	case c.ExternalBroker != "":
		return c.ExternalBroker
	case boundMQTT == "" && boundTLS != "":
		return dialURL("ssl", boundTLS)
	}
	return dialURL("tcp", boundMQTT)
}

// dialURL is scheme://HOST:PORT for a bound listener address, 127.0.0.1 for a wildcard host.
func dialURL(scheme, bound string) string {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return scheme + "://" + bound
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}
