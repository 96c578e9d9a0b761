// Package broker is the project's MQTT broker: mochi-mqtt v2 with token authentication
// (AuthHook), the per-identity topic ACL of PROTOCOL.md (ACL, ACLHook), and listeners that keep
// accepting after an error such as running out of descriptors. The gateway embeds it and talks
// to it through mochi's inline client (Server); cmd broker/ runs it on its own.
package broker

import (
	"crypto/ecdsa"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"

	"telematics/pkg/clock"
	"telematics/pkg/cmdline"
	"telematics/pkg/tlsconf"
	"telematics/pkg/token"
)

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("broker closed")

// Listener ids, as they appear in mochi's logs and in mochi.Client.Net.Listener.
const (
	ListenerTCP = "tcp"
	ListenerWS  = "ws"
	ListenerTLS = "tls" // MQTT over TLS
	ListenerWSS = "wss" // MQTT over secure WebSocket
)

// clientReadBufferBytes is each connection's read buffer (mochi's default 2 KB), held for as
// long as the client is connected. A car's largest usual packet, a full telemetry message, is
// about 520 bytes; a larger packet is read past the buffer, not refused.
const clientReadBufferBytes = 1024

// Broker is a configured mochi server with the project's hooks and listeners.
type Broker struct {
	cfg    Config
	log    *slog.Logger
	server *mqtt.Server
	auth   *AuthHook
	clock  clock.Clock
	tcp    *tcpListener // nil when MQTTAddr is empty
	ws     *wsListener  // nil when WSAddr is empty
	tlsTCP *tcpListener // nil without TLSMQTTAddr or a certificate
	wss    *wsListener  // nil without TLSWSAddr or a certificate
	// certs are the TLS files the broker reads itself (Config.TLSCert); nil otherwise.
	certs *tlsconf.Certs

	mu      sync.Mutex
	tokens  *tokenFollower // writes the state file; nil without one
	started bool
	closed  bool

	// sessions reports ended app sessions (OnAppSessionEnd).
	sessions *AppSessionHook
}

// New builds a broker that trusts tokens signed by any of keys. It binds nothing until Start.
func New(cfg Config, keys []*ecdsa.PublicKey, logger *slog.Logger) (*Broker, error) {
	return newBroker(cfg, keys, logger, nil)
}

func newBroker(cfg Config, keys []*ecdsa.PublicKey, logger *slog.Logger, clk clock.Clock) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid broker configuration:\n%w", err)
	}
	if len(keys) == 0 {
		return nil, ErrNoGatewayKey
	}
	for i, k := range keys {
		if k == nil {
			return nil, fmt.Errorf("gateway key %d is nil", i)
		}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	server := mqtt.New(&mqtt.Options{
		Capabilities:            capabilities(cfg),
		ClientNetReadBufferSize: clientReadBufferBytes,
		Logger:                  slog.New(redactPackets(logger.Handler())),
		InlineClient:            true, // the embedded gateway publishes and subscribes through it
	})
	clk = clock.Or(clk)
	b := &Broker{cfg: cfg, log: logger, server: server, clock: clk}
	auth, err := AddHooks(server, cfg, keys, clk)
	if err != nil {
		return nil, err
	}
	b.auth = auth
	b.sessions = NewAppSessionHook(auth)
	if err := server.AddHook(b.sessions, nil); err != nil {
		return nil, fmt.Errorf("add app session hook: %w", err)
	}
	if cfg.MQTTAddr != "" && cfg.MQTTAddr != cmdline.Off {
		b.tcp = newTCPListener(ListenerTCP, cfg.MQTTAddr, cfg.ConnectTimeout)
		b.tcp.disconnect = func(id string) { disconnectListenerClients(server, id) }
	}
	if cfg.WSAddr != "" && cfg.WSAddr != cmdline.Off {
		b.ws = newWSListener(ListenerWS, cfg.WSAddr, cfg.ConnectTimeout, cfg.MaxPacketBytes)
		b.ws.disconnect = func(id string) { disconnectListenerClients(server, id) }
	}
	tlsCfg := cfg.TLS
	if tlsCfg == nil && cfg.TLSCert != "" {
		if b.certs, err = tlsconf.Load(tlsconf.Files{Cert: cfg.TLSCert, Key: cfg.TLSKey, ClientCA: cfg.ClientCA}); err != nil {
			return nil, err
		}
		tlsCfg = b.certs.ServerConfig()
		if pool := b.certs.ClientCAs(); pool != nil {
			// The client CA is the gateway's device CA (device-ca.crt): the cars whose
			// certificates it signed are admitted by them (devicecert.go).
			b.auth.SetDeviceCAs(pool)
		}
	}
	if tlsCfg == nil {
		if on(cfg.TLSMQTTAddr) || on(cfg.TLSWSAddr) {
			logger.Info("no TLS certificate (tls_cert): the TLS listeners stay closed")
		}
		return b, nil
	}
	if on(cfg.TLSMQTTAddr) {
		b.tlsTCP = newTCPListener(ListenerTLS, cfg.TLSMQTTAddr, cfg.ConnectTimeout)
		b.tlsTCP.tls = tlsCfg
		b.tlsTCP.disconnect = func(id string) { disconnectListenerClients(server, id) }
	}
	if on(cfg.TLSWSAddr) {
		b.wss = newWSListener(ListenerWSS, cfg.TLSWSAddr, cfg.ConnectTimeout, cfg.MaxPacketBytes)
		b.wss.tls = tlsCfg
		b.wss.disconnect = func(id string) { disconnectListenerClients(server, id) }
	}
	return b, nil
}

// ReloadTLS reads the certificate, key and client CA files of the configuration again
// (SIGHUP): new connections get them, established ones go on. Without TLSCert it does
// nothing; on an error the certificates in use stay.
func (b *Broker) ReloadTLS() error {
	if b.certs == nil {
		return nil
	}
	// The auth hook trusts the client CA file as the device CA (New): a replaced file must
	// reach it too, else the listener would verify a new CA's certificates that the hook then
	// refuses. The pool the listener now uses, from the same read; a broken file changes
	// nothing.
	if err := b.certs.Reload(); err != nil {
		return err
	}
	if pool := b.certs.ClientCAs(); pool != nil {
		b.auth.SetDeviceCAs(pool)
	}
	b.log.Info("TLS certificates reloaded", "cert", b.cfg.TLSCert, "not_after", b.certs.Leaf().NotAfter)
	return nil
}

// capabilities starts from mochi's defaults (a partial Capabilities struct admits no client)
// and sets what the fleet needs.
func capabilities(cfg Config) *mqtt.Capabilities {
	c := mqtt.NewDefaultServerCapabilities()
	c.MaximumPacketSize = uint32(cfg.MaxPacketBytes)
	c.MaximumClientWritesPending = int32(cfg.MaxClientWritesPending)
	c.MaximumSessionExpiryInterval = uint32(cfg.SessionExpiry / time.Second)
	if cfg.MaxClients > 0 {
		c.MaximumClients = int64(cfg.MaxClients)
	} else {
		c.MaximumClients = math.MaxInt64
	}
	// mochi deletes every retained message older than this (default one day); the retained
	// whitelist on v/{vin}/keys must stay until the gateway replaces it.
	c.MaximumMessageExpiryInterval = 0
	// mochi checks the ACL on a publish's topic before resolving a topic alias, so an
	// aliased publish would be checked against the wrong (empty) topic. With no aliases
	// granted, MQTT 5 clients send full topic names.
	c.TopicAliasMaximum = 0
	return c
}

// AddHooks registers the project's hooks on server: the AuthHook (token authentication),
// the ACLHook (topic policy) and the delivery hooks (GatewayDeliveryHook, StatusWillHook,
// SharedRedeliveryHook), with cfg's limits and the clock clk (nil: the real clock). It
// returns the AuthHook, which knows each connected client's Identity. Packet size is bounded
// by the server's Capabilities.MaximumPacketSize, not by a hook.
func AddHooks(server *mqtt.Server, cfg Config, keys []*ecdsa.PublicKey, clk clock.Clock) (*AuthHook, error) {
	clk = clock.Or(clk)
	acl := ACL{MaxTopicBytes: cfg.MaxTopicBytes, Clock: clk}
	auth := NewAuthHook(token.NewVerifier(clk, keys...), acl, cfg.MaxConnsPerIdentity)
	if err := server.AddHook(auth, nil); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	if err := server.AddHook(NewACLHook(acl, auth), nil); err != nil {
		return nil, fmt.Errorf("add acl hook: %w", err)
	}
	if err := server.AddHook(NewGatewayDeliveryHook(auth), nil); err != nil {
		return nil, fmt.Errorf("add gateway delivery hook: %w", err)
	}
	if err := server.AddHook(NewStatusWillHook(auth, clk), nil); err != nil {
		return nil, fmt.Errorf("add status will hook: %w", err)
	}
	if err := server.AddHook(NewSharedRedeliveryHook(server, server.Log), nil); err != nil {
		return nil, fmt.Errorf("add shared redelivery hook: %w", err)
	}
	return auth, nil
}

// Start binds the listeners and starts serving. MQTTAddr and WSAddr then report the bound
// addresses.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return ErrClosed
	case b.started:
		return errors.New("broker already started")
	}
	b.started = true
	if b.tcp != nil {
		if err := b.server.AddListener(b.tcp); err != nil {
			return fmt.Errorf("listen for MQTT on %s: %w", b.cfg.MQTTAddr, err)
		}
	}
	if b.ws != nil {
		if err := b.server.AddListener(b.ws); err != nil {
			return fmt.Errorf("listen for MQTT over WebSocket on %s: %w", b.cfg.WSAddr, err)
		}
	}
	if b.tlsTCP != nil {
		if err := b.server.AddListener(b.tlsTCP); err != nil {
			return fmt.Errorf("listen for MQTT over TLS on %s: %w", b.cfg.TLSMQTTAddr, err)
		}
	}
	if b.wss != nil {
		if err := b.server.AddListener(b.wss); err != nil {
			return fmt.Errorf("listen for MQTT over secure WebSocket on %s: %w", b.cfg.TLSWSAddr, err)
		}
	}
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("start mqtt server: %w", err)
	}
	b.log.Info("broker started", "mqtt_addr", b.MQTTAddr(), "ws_addr", b.WSAddr(),
		"tls_mqtt_addr", b.TLSMQTTAddr(), "tls_ws_addr", b.TLSWSAddr())
	return nil
}

// MQTTAddr is the TCP listener's address (the bound one after Start), or "" if disabled.
func (b *Broker) MQTTAddr() string {
	if b.tcp == nil {
		return ""
	}
	return b.tcp.Address()
}

// WSAddr is the WebSocket listener's address (the bound one after Start), or "" if disabled.
func (b *Broker) WSAddr() string {
	if b.ws == nil {
		return ""
	}
	return b.ws.Address()
}

// TLSMQTTAddr is the MQTT over TLS listener's address (the bound one after Start), or "" if
// there is none.
func (b *Broker) TLSMQTTAddr() string {
	if b.tlsTCP == nil {
		return ""
	}
	return b.tlsTCP.Address()
}

// TLSWSAddr is the secure WebSocket listener's address (the bound one after Start), or "".
func (b *Broker) TLSWSAddr() string {
	if b.wss == nil {
		return ""
	}
	return b.wss.Address()
}

// Server is the mochi server, for the embedded gateway's inline client (Publish, Subscribe).
// Inline publishes bypass the ACL: the gateway is trusted.
func (b *Broker) Server() *mqtt.Server { return b.server }

// Auth is the authentication hook, which knows who each connected client is.
func (b *Broker) Auth() *AuthHook { return b.auth }

// Close stops the listeners, disconnects every client and waits for the goroutines the
// broker started. It is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	// mochi closes the listeners (each disconnects its clients and waits for them), then
	// stops its event loop and the hooks. It must run once: it closes a channel.
	err := b.server.Close()
	if b.tokens != nil {
		b.tokens.close() // after the server: no car token arrives any more
	}
	b.log.Info("broker stopped")
	return err
}
