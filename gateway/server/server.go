// Package server wires the gateway: the store, the signing key, the embedded broker (or a
// connection to an external one), the command router and the HTTP API. `gateway serve` and
// `gateway demo` run it, and end-to-end tests start it on 127.0.0.1:0 with a t.TempDir().
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/commands"
	"telematics/gateway/console"
	"telematics/gateway/httpapi"
	"telematics/gateway/keys"
	"telematics/gateway/metrics"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/broker"
	"telematics/pkg/clock"
	"telematics/pkg/devicecert"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
	"telematics/pkg/token"
)

// Files in the data directory.
const (
	DBFile         = "gateway.db"
	SigningKeyFile = "gateway.key" // ECDSA P-256 private key, 0600
	PublicKeyFile  = "gateway.pub" // its public half, for `broker --gateway-pubkey`
	AdminTokenFile = "admin.token" // 0600
)

// Gateway is one running gateway.
type Gateway struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock

	store  *store.Store
	audit  *audit.Log
	signer *sign.Signer
	ring   *keyRing
	issuer *token.Issuer
	broker *broker.Broker // nil with an external broker
	bus    mqttc.Client
	router *commands.Router
	twofa  *twofa.Service
	keys   *keys.Service
	api    *httpapi.API
	// console is the operator console served at / (startConsole).
	console *console.Console
	// metrics counts every committed audit record and reads gauges from the parts above.
	metrics *metrics.Metrics
	// deviceCA issues the cars' device certificates (devicecert.go).
	deviceCA *devicecert.CA

	keysMu sync.Mutex
	// tokensMu guards vehicleTokens: each car's current token id, for cars whose id is
	// recorded; the embedded broker refuses their other tokens.
	tokensMu      sync.RWMutex
	vehicleTokens map[string]string
	reissued      map[string]bool // cars whose credentials were reissued (publishCarTokens)
	adminToken    string
	httpLn        net.Listener // nil without a plain HTTP listener
	httpsLn       net.Listener // nil without an HTTPS listener
	httpCtx       context.Context
	httpServing   int // HTTP servers started, each reports once on httpDone
	// certs are the TLS listeners' certificates (nil without TLS); caFile and caPEM the CA
	// certificate clients are handed to verify them.
	certs     *tlsconf.Certs
	caFile    string
	caPEM     string
	http      swappableHandler // "starting" answers, then the API (listenHTTP)
	brokerURL string
	// retentionStop ends the audit retention sweep; retentionDone closes when it has.
	retentionStop context.CancelFunc
	retentionDone chan struct{}

	cancel    context.CancelFunc
	httpDone  chan error
	closeOnce sync.Once
	closeErr  error
}

// Options are what tests and the demo may change beyond Config.
type Options struct {
	Logger *slog.Logger
	// Clock is the time every part of the gateway runs on (nil: the real clock).
	Clock clock.Clock
	// PasswordParams lets tests use cheap argon2id parameters.
	PasswordParams *accounts.Params
}

// Start opens the store and keys, starts the broker (or connects to the external one), the
// router and the HTTP listener, and returns once all are serving. Close undoes it.
func Start(ctx context.Context, cfg Config, o Options) (_ *Gateway, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	g := &Gateway{cfg: cfg, log: o.Logger, clock: clock.Or(o.Clock), httpDone: make(chan error, 2)}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	var made *footprint
	defer func() {
		if err != nil {
			g.Close()
			made.undo() // a failed start leaves no fresh keys behind
		}
	}()
	if err := g.listenHTTP(); err != nil {
		return nil, err
	}
	if made, err = prepareDataDir(cfg); err != nil {
		return nil, err
	}
	if err := g.loadDeviceCA(); err != nil {
		return nil, err
	}
	if err := g.loadTLS(); err != nil {
		return nil, err
	}
	g.serveHTTPS()
	if g.store, err = openStore(cfg); err != nil {
		return nil, err
	}
	if g.audit, err = audit.Open(g.store.KV()); err != nil {
		return nil, err
	}
	g.metrics = metrics.New()
	g.audit.Observe(g.metrics.ObserveAudit)
	g.startRetention()
	if err := g.loadKeys(); err != nil {
		return nil, err
	}
	g.issuer = token.NewIssuer(g.signer, g.clock)

	if err := g.loadVehicleTokens(); err != nil {
		return nil, err
	}
	if err := g.startBus(ctx); err != nil {
		return nil, err
	}
	g.trustDeviceCA()
	rcfg := commands.DefaultConfig()
	rcfg.Shards = cfg.Commands.Shards
	rcfg.RatePerMinute = cfg.Commands.RatePerMinute
	rcfg.RateBurst = cfg.Commands.RateBurst
	rcfg.ResultGrace = cfg.Commands.ResultGrace
	rcfg.TwinFlushInterval = cfg.Commands.TwinFlushInterval
	if g.clustered() {
		// Requests and results through $share/gateway/…, pending commands in the store.
		if rcfg.Replica, err = replicaID(cfg.Data); err != nil {
			return nil, err
		}
	}
	if g.twofa, err = g.openTwoFA(); err != nil {
		return nil, err
	}
	if g.broker != nil {
		// A step-up lives as long as the app's MQTT connection (its client id) and no longer:
		// the connections of before this start are gone, and so are their elevations.
		if err := g.twofa.EndAllSessions(); err != nil {
			return nil, err
		}
		g.broker.OnAppSessionEnd(g.twofa.EndSession)
	}
	g.keysMu.Lock()
	g.keys, err = keys.New(g.store, g.audit, g.ring, g.bus, keyChangeFactor{g.twofa}, g.clock, g.log.With("component", "keys"))
	g.keysMu.Unlock()
	if err != nil {
		return nil, err
	}
	g.keys.CredentialsRetired = g.retireVehicleToken // a decommissioned car's, once it has its empty whitelist
	if rcfg.Replica != "" {
		g.keys.SharedGroup = "gateway" // each acknowledgement and journal to one replica
	}
	if g.router, err = commands.New(rcfg, g.store, g.audit, g.bus, g.keys, activeUsers{g.store, secondFactor{g.twofa}}, g.clock, g.log); err != nil {
		return nil, err
	}
	if err := g.router.Subscribe(ctx); err != nil {
		return nil, fmt.Errorf("subscribe to car and app topics: %w", err)
	}
	if err := g.keys.Subscribe(ctx); err != nil {
		return nil, fmt.Errorf("subscribe to whitelist acknowledgements: %w", err)
	}
	if err := g.startListeners(); err != nil {
		return nil, err
	}
	if err := g.finishRotationStart(ctx); err != nil {
		return nil, err
	}
	// The broker keeps retained whitelists in memory only: publish them all at every start
	// (and, on an external broker, at every reconnect).
	g.keys.PublishAll(ctx)

	params := accounts.DefaultParams
	if o.PasswordParams != nil {
		params = *o.PasswordParams
	}
	g.api = &httpapi.API{
		Store: g.store, Audit: g.audit, Issuer: g.issuer, GatewayKey: g.signer, CAPEM: g.caPEM,
		Twins:      g.router,
		AdminToken: g.adminToken, AllowRemote: cfg.AdminAllowRemote, Clock: g.clock, Log: g.log,
		BrokerURL: g.brokerURL, AppTokenTTL: cfg.AppTokenTTL,
		VehicleTokenTTL: cfg.VehicleTokenTTL, PasswordParams: params,
		Hashes: accounts.NewGate(cfg.PasswordHashConcurrency, cfg.PasswordHashWait),
		Guard:  httpapi.TwoFactorGuard{Svc: g.twofa},
		// The password lockout counts with the 2FA policy's numbers, apart from its lockout.
		Lockout:            accounts.NewLockout(cfg.TwoFA.MaxFailures, cfg.TwoFA.FailureWindow, cfg.TwoFA.LockoutDuration, g.clock),
		LoginRatePerMinute: cfg.Login.PerIPRatePerMinute, LoginBurst: cfg.Login.PerIPBurst,
	}
	g.api.Verifier = token.NewVerifier(g.clock, g.ring.publicKeys()...)
	g.api.SigningKeys = g.ring.publicKeys()
	g.api.TwoFA = g.twofa
	g.api.DeviceCA = g.deviceCA
	g.api.Keys = g.keys
	g.api.Hooks = httpapi.Hooks{
		CarKey: g.keys.GrantSigner,
		Ready:  g.ready,
		Stats: func() api.Stats {
			st := g.router.TelemetryStats()
			return api.Stats{TelemetryReceived: st.Received, TelemetryLost: st.Lost,
				CarsReporting: st.Cars, PendingCommands: g.router.PendingCount()}
		},
		TokenRetired: g.retireVehicleToken,
		TokensEnded:  g.userTokensEnded,
	}
	g.registerGauges()
	g.api.Metrics = g.metrics.Handler()
	handler, err := g.startConsole()
	if err != nil {
		return nil, err
	}
	g.http.set(handler)
	g.log.Info("gateway started", "http", g.HTTPURL(), "mqtt", g.brokerURL, "data", cfg.Data, "replica", rcfg.Replica)
	return g, nil
}

// loadVehicleTokens reads each car's current token id from the store.
func (g *Gateway) loadVehicleTokens() error {
	vs, err := g.store.ListVehicles()
	if err != nil {
		return err
	}
	m := make(map[string]string, len(vs))
	re := map[string]bool{}
	for _, v := range vs {
		if v.TokenID != "" {
			m[v.VIN] = v.TokenID
		}
		if v.Reissued {
			re[v.VIN] = true
		}
	}
	g.tokensMu.Lock()
	g.vehicleTokens, g.reissued = m, re
	g.tokensMu.Unlock()
	return nil
}

// publishCarTokens tells a broker that runs apart from the gateway the current token of each
// car in vins whose credentials were reissued (every such car when vins is empty): one signed,
// retained message per car on v/_tokens/{vin}. The embedded broker asks the gateway directly
// and needs none.
func (g *Gateway) publishCarTokens(ctx context.Context, bus mqttc.Client, vins ...string) {
	if g.cfg.ExternalBroker == "" || bus == nil {
		return
	}
	g.tokensMu.RLock()
	if len(vins) == 0 {
		for vin := range g.reissued {
			vins = append(vins, vin)
		}
	}
	cts := make([]protocol.CarToken, 0, len(vins))
	for _, vin := range vins {
		if g.reissued[vin] {
			cts = append(cts, protocol.CarToken{V: protocol.Version, VIN: vin, JTI: g.vehicleTokens[vin]})
		}
	}
	g.tokensMu.RUnlock()
	for _, ct := range cts {
		ct.IssuedAtMs = g.clock.Now().UnixMilli()
		env, err := g.signer.Seal(ct)
		if err != nil {
			g.log.Error("sign a car token", "vin", ct.VIN, "err", err)
			continue
		}
		b, err := json.Marshal(env)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = bus.Publish(pctx, protocol.CarTokenPrefix+ct.VIN, 1, true, b)
		cancel()
		if err != nil {
			g.log.Warn("car token not published; will retry on reconnect", "vin", ct.VIN, "err", err)
		}
	}
}

// tokenRetired reports whether id is a car's token other than its current one, or an app
// token that was ended (appTokenEnded).
func (g *Gateway) tokenRetired(id broker.Identity) bool {
	if id.Role == protocol.RoleApp {
		return g.appTokenEnded(id.Subject, id.Gen)
	}
	if id.Role != protocol.RoleVehicle {
		return false
	}
	g.tokensMu.RLock()
	cur, ok := g.vehicleTokens[id.Subject]
	g.tokensMu.RUnlock()
	return ok && cur != id.TokenID
}

// retireVehicleToken makes jti vin's only accepted token and closes sessions opened with
// another one.
func (g *Gateway) retireVehicleToken(vin, jti string) {
	g.tokensMu.Lock()
	if g.vehicleTokens == nil {
		g.vehicleTokens = map[string]string{}
	}
	if g.reissued == nil {
		g.reissued = map[string]bool{}
	}
	g.vehicleTokens[vin], g.reissued[vin] = jti, true
	g.tokensMu.Unlock()
	if g.broker != nil {
		g.broker.DropRetired(vin)
	}
	g.publishCarTokens(context.Background(), g.bus, vin)
}

// registerGauges adds the gauges and counters read from the running gateway at each scrape.
func (g *Gateway) registerGauges() {
	m := g.metrics
	m.Gauge("gateway_cars_online", "Cars whose last status is online.", func() float64 { return float64(g.router.OnlineCount()) })
	m.Gauge("gateway_commands_pending", "Accepted commands waiting for their car's result.", func() float64 { return float64(g.router.PendingCount()) })
	m.Gauge("gateway_whitelists_unacknowledged", "Cars that have not yet acknowledged their current whitelist (a key change or revocation not yet on the car).",
		func() float64 { return float64(g.keys.OutOfSync()) })
	m.Counter("gateway_telemetry_messages_total", "Telemetry messages taken into the twin since the gateway started.",
		func() float64 { return float64(g.router.TelemetryStats().Received) })
	m.Gauge("gateway_telemetry_lost", "Telemetry messages missing from the cars' sequence numbers since the gateway started.",
		func() float64 { return float64(g.router.TelemetryStats().Lost) })
	m.Gauge("gateway_bus_connected", "1 while the gateway's connection to its broker is up.", func() float64 {
		if g.bus != nil && g.bus.Connected() {
			return 1
		}
		return 0
	})
	if g.broker == nil {
		return
	}
	info := g.broker.Server().Info
	m.Gauge("broker_clients_connected", "MQTT clients connected to the embedded broker.", func() float64 { return float64(atomic.LoadInt64(&info.ClientsConnected)) })
	m.Counter("broker_messages_received_total", "PUBLISH packets the embedded broker received.", func() float64 { return float64(atomic.LoadInt64(&info.MessagesReceived)) })
	m.Counter("broker_messages_sent_total", "PUBLISH packets the embedded broker sent.", func() float64 { return float64(atomic.LoadInt64(&info.MessagesSent)) })
	m.Counter("broker_messages_dropped_total", "Deliveries the embedded broker dropped because a client's write queue was full.",
		func() float64 { return float64(atomic.LoadInt64(&info.MessagesDropped)) })
	m.Counter("broker_inflight_dropped_total", "QoS 1/2 messages the embedded broker dropped for a client's full in-flight store.",
		func() float64 { return float64(atomic.LoadInt64(&info.InflightDropped)) })
}

func (g *Gateway) loadKeys() error {
	ring, created, err := loadKeyRing(g.cfg.Data)
	if err != nil {
		return err
	}
	g.ring, g.signer = ring, ring.current
	if created {
		g.log.Info("created gateway signing key", "kid", g.signer.KID())
	}
	for _, dir := range []string{g.cfg.Data, g.cfg.PublicDir} {
		if dir == "" {
			continue
		}
		if err := writePublicKeys(dir, ring); err != nil {
			return err
		}
	}
	tokPath := g.cfg.adminTokenPath()
	if err := checkSecretFile(tokPath); err != nil {
		return err
	}
	b, err := os.ReadFile(tokPath)
	switch {
	case err == nil && len(strings.TrimSpace(string(b))) >= 32:
		g.adminToken = strings.TrimSpace(string(b))
	case err == nil || errors.Is(err, os.ErrNotExist):
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		g.adminToken = hex.EncodeToString(raw)
		if err := sign.WriteFileAtomic(tokPath, []byte(g.adminToken+"\n"), 0o600); err != nil {
			return err
		}
	default:
		return fmt.Errorf("read admin token: %w", err)
	}
	return nil
}

// brokerClientID is the gateway's MQTT client id on an external broker, "gateway-" and a random
// suffix made on first use and kept in the store, so a restarted gateway resumes its session.
func (g *Gateway) brokerClientID() (string, error) {
	const key = "broker_client_id"
	id, err := g.store.GetMeta(key)
	if err != nil {
		return "", err
	}
	if len(id) == 0 {
		suffix := make([]byte, 6)
		if _, err := rand.Read(suffix); err != nil {
			return "", err
		}
		id = []byte("gateway-" + hex.EncodeToString(suffix))
		if err := g.store.PutMeta(key, id); err != nil {
			return "", err
		}
	}
	return string(id), nil
}

// busClientID is the client id and session kind of the connection to an external broker. One
// gateway: the id kept in the store, persistent session. A replica of a cluster: its own id
// (DATA/replica.id; the store is shared) and a clean session: the broker would otherwise keep a
// dead replica's share of $share/gateway/… and go on handing it about 1/N of the requests and
// results, queued for a process that may never return; with a clean session they go to the
// live replicas, and a replica's pending commands are in the store for the others.
func (g *Gateway) busClientID() (id string, clean bool, err error) {
	if g.clustered() {
		id, err = replicaID(g.cfg.Data)
		return id, true, err
	}
	id, err = g.brokerClientID()
	return id, false, err
}

func (g *Gateway) startBus(ctx context.Context) error {
	if g.cfg.ExternalBroker != "" {
		tok, _, err := g.issuer.Issue("gateway", protocol.RoleGateway, 365*24*time.Hour)
		if err != nil {
			return err
		}
		if g.cfg.ExternalBrokerPassword != "" {
			tok = g.cfg.ExternalBrokerPassword
		}
		clientID, clean, err := g.busClientID()
		if err != nil {
			return err
		}
		tlsCfg, err := g.externalBrokerTLS()
		if err != nil {
			return err
		}
		keepAlive := time.Duration(0) // mqttc's default, 30 s
		workers := 4 * runtime.GOMAXPROCS(0)
		if clean {
			// A replica's request handler holds its worker until the request is decided
			// (acknowledged only then): more workers keep decisions parallel.
			workers *= 4
			// A replica whose machine is lost (no TCP close) keeps its share of the requests
			// until the broker gives up on it, at 1.5 keep-alives: lost with it meanwhile.
			keepAlive = replicaKeepAlive
		}
		var lostAtMs atomic.Int64 // when the connection to the broker was last lost; 0: never
		c, err := mqttc.Dial(ctx, mqttc.Options{
			TLS: tlsCfg,
			// One gateway: a persistent session under a client id that stays with the data
			// dir: while the gateway is away (a restart, a network break) the broker queues
			// the QoS 1 messages of its subscriptions (results, journals, key
			// acknowledgements) and hands them over when it is back, instead of dropping them.
			// A replica: a clean session (busClientID says why).
			BrokerURL: g.cfg.ExternalBroker, ClientID: clientID,
			Username: "gateway", Password: tok, Logger: g.log, CleanSession: clean, KeepAlive: keepAlive,
			// Every car's traffic flows through this one client: decode in parallel (each
			// topic, i.e. each car, stays in order on one worker).
			Workers: workers, QueueSize: 4096,
			OnConnectionLost: func(error) { lostAtMs.Store(g.clock.Now().UnixMilli()) },
			OnConnect: func(c mqttc.Client) {
				// A broker that runs apart from the gateway learns which car tokens are
				// retired (again after its own restart, which forgets them).
				g.publishCarTokens(context.Background(), c)
				// After a broker restart the broker holds no retained whitelist: one
				// replica of a cluster publishes them again, one gateway always does.
				if k, lost := g.keysReady(), lostAtMs.Load(); k != nil && lost != 0 {
					go func() {
						if _, err := k.RepublishAfterReconnect(context.Background(), clientID, time.UnixMilli(lost)); err != nil {
							g.log.Warn("whitelists not republished after a broker reconnect", "err", err)
						}
					}()
				} else if k != nil {
					go k.PublishAll(context.Background())
				}
			},
		})
		if err != nil {
			return fmt.Errorf("connect to external broker %s: %w", g.cfg.ExternalBroker, err)
		}
		g.bus = c
		g.brokerURL = g.cfg.advertisedMQTT("", "")
		return nil
	}
	bcfg := broker.DefaultConfig()
	bcfg.MQTTAddr = g.cfg.MQTTAddr
	bcfg.WSAddr = g.cfg.WSAddr
	bcfg.TLSMQTTAddr, bcfg.TLSWSAddr = g.cfg.TLS.MQTTAddr, g.cfg.TLS.WSAddr
	bcfg.AllowPlaintext = g.cfg.AllowPlaintext
	if g.certs != nil {
		bcfg.TLS = g.certs.ServerConfig()
	}
	bcfg.MaxPacketBytes = g.cfg.Broker.MaxPacketBytes
	bcfg.MaxTopicBytes = g.cfg.Broker.MaxTopicBytes
	bcfg.MaxConnsPerIdentity = g.cfg.Broker.MaxConnsPerIdentity
	bcfg.MaxClientWritesPending = g.cfg.Broker.MaxClientWritesPending
	if g.cfg.Broker.MaxClients > 0 {
		bcfg.MaxClients = g.cfg.Broker.MaxClients
	}
	b, err := broker.New(bcfg, g.ring.publicKeys(), g.log.With("component", "broker"))
	if err != nil {
		return err
	}
	// The listeners open only in startListeners, after the gateway subscribed: a car that
	// connects at once must find its journal's subscriber there, or the broker would
	// acknowledge and drop what it sends.
	g.broker = b
	b.Auth().SetRetired(g.tokenRetired)
	// Handlers wait for durable writes (a result's audit record), so workers are many more than
	// cores; each topic, i.e. each car, stays on one worker and in order. With 2 workers the
	// bench saturated between 500 and 700 commands/s (docs/PERFORMANCE.md).
	g.bus = mqttc.NewInline(b.Server(), mqttc.InlineOptions{Workers: 64, QueueSize: 256})
	return nil
}

// startListeners opens the embedded broker to clients.
func (g *Gateway) startListeners() error {
	if g.broker == nil {
		return nil
	}
	if err := g.broker.Start(); err != nil {
		return err
	}
	g.brokerURL = g.cfg.advertisedMQTT(g.broker.MQTTAddr(), g.broker.TLSMQTTAddr())
	return nil
}

// keysReady returns the key registry once Start created it (the bus's OnConnect may run
// before).
func (g *Gateway) keysReady() *keys.Service {
	g.keysMu.Lock()
	defer g.keysMu.Unlock()
	return g.keys
}

func (g *Gateway) ready() error {
	if !g.bus.Connected() {
		return errors.New("not connected to the broker")
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyStoreTimeout)
	defer cancel()
	if err := g.store.Ping(ctx); err != nil {
		g.log.Warn("store unavailable", "err", err)
		return errors.New("store unavailable: its transactions fail with internal until it answers again")
	}
	return nil
}

// readyStoreTimeout bounds the store read of a readiness probe.
const readyStoreTimeout = time.Second

// HTTPURL is the base URL of the HTTP API: the plain listener's, or the HTTPS one's when
// there is no plain listener.
func (g *Gateway) HTTPURL() string {
	if u := g.plainHTTPURL(); u != "" {
		return u
	}
	return g.HTTPSURL()
}

func (g *Gateway) plainHTTPURL() string {
	if g.httpLn == nil {
		return ""
	}
	return "http://" + g.httpLn.Addr().String()
}

// HTTPSURL is the base URL of the HTTPS listener ("" if none).
func (g *Gateway) HTTPSURL() string {
	if g.httpsLn == nil {
		return ""
	}
	return "https://" + g.httpsLn.Addr().String()
}

// BrokerURL is the MQTT URL apps and cars are told.
func (g *Gateway) BrokerURL() string { return g.brokerURL }

// plainBrokerURL is the embedded broker's plain MQTT URL ("" if none).
func (g *Gateway) plainBrokerURL() string {
	if g.broker == nil || g.broker.MQTTAddr() == "" {
		return ""
	}
	return dialURL("tcp", g.broker.MQTTAddr())
}

// BrokerTLSURL is the embedded broker's MQTT over TLS URL, ssl://HOST:PORT ("" if none).
func (g *Gateway) BrokerTLSURL() string {
	if g.broker == nil || g.broker.TLSMQTTAddr() == "" {
		return ""
	}
	return dialURL("ssl", g.broker.TLSMQTTAddr())
}

// WSAddr is the embedded broker's WebSocket address ("" if none).
func (g *Gateway) WSAddr() string {
	if g.broker == nil {
		return ""
	}
	return g.broker.WSAddr()
}

// TLSWSAddr is the embedded broker's secure WebSocket address ("" if none).
func (g *Gateway) TLSWSAddr() string {
	if g.broker == nil {
		return ""
	}
	return g.broker.TLSWSAddr()
}

// wsURL is scheme://addr for a WebSocket listener's address ("" if none).
func (g *Gateway) wsURL(scheme, addr string) string {
	if addr == "" {
		return ""
	}
	return dialURL(scheme, addr)
}

// CAFile is the PEM CA certificate clients verify the TLS listeners with ("" without TLS, or
// with operator certificates and no tls.ca_file).
func (g *Gateway) CAFile() string { return g.caFile }

// AdminToken is the admin API's bearer token.
func (g *Gateway) AdminToken() string { return g.adminToken }

// Router is the command path (for tests and the demo).
func (g *Gateway) Router() *commands.Router { return g.router }

// Audit is the audit log.
func (g *Gateway) Audit() *audit.Log { return g.audit }

// Signer is the gateway's signing key.
func (g *Gateway) Signer() *sign.Signer { return g.signer }

// Issuer mints tokens with the gateway's key.
func (g *Gateway) Issuer() *token.Issuer { return g.issuer }

// Wait blocks until the HTTP server stops on its own (an error) or ctx ends.
func (g *Gateway) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-g.httpDone:
		g.httpDone <- err
		return err
	}
}

// Close stops in reverse order of start: HTTP, router (draining queued requests), the bus and
// broker, then the store. It is idempotent.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		var errs []error
		g.closeConsole()
		if g.cancel != nil {
			g.cancel()
			for range g.httpServing {
				<-g.httpDone
			}
		}
		for _, ln := range []net.Listener{g.httpLn, g.httpsLn} {
			if ln != nil {
				ln.Close() // one never served (a failed start); the others are closed already
			}
		}
		if g.router != nil {
			errs = append(errs, g.router.Close())
		}
		if g.bus != nil {
			errs = append(errs, g.bus.Close())
		}
		if g.broker != nil {
			errs = append(errs, g.broker.Close())
		}
		g.stopRetention()
		if g.audit != nil {
			g.audit.Observe(nil)
		}
		if g.store != nil {
			errs = append(errs, g.store.Close())
		}
		g.closeErr = errors.Join(errs...)
	})
	return g.closeErr
}
