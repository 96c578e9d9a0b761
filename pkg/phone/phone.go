// Package phone is the simulated phone app: it holds the phone's key (the private half never
// leaves the phone) and its login session, pairs that key with cars, and sends signed
// commands to cars through the cloud (broker and gateway) or, when the cloud does not answer,
// over the car's local link. It talks to the gateway's HTTP API through package api.
package phone

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"telematics/pkg/api"
	"telematics/pkg/clock"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// Session is what a login yields; `vehicle-sim app login` stores it (0600) for later calls.
type Session struct {
	Gateway        string `json:"gateway"`
	User           string `json:"user"`
	Token          string `json:"token"`
	ExpiresAtMs    int64  `json:"expires_at"`
	ClientIDPrefix string `json:"client_id_prefix"`
	BrokerURL      string `json:"broker_url"`
	GatewayKey     string `json:"gateway_key"`
	// GatewayKeys are every key the gateway signed with at login (GatewayKey, and the previous
	// one during a rotation): the phone accepts a car on the local link that one of them
	// certified. Empty in a session from before: GatewayKey alone.
	GatewayKeys []string `json:"gateway_keys,omitempty"`
	// ClientID is this login's MQTT client id ({user}-{random}). The gateway's 2FA step-up is
	// per session, so every command sent under one login shares it.
	ClientID string `json:"client_id"`
	// CAFile is the PEM CA certificate the gateway's HTTPS and the broker's TLS certificates
	// are verified with ("": the system's roots); kept so that every later call verifies the
	// same way.
	CAFile string `json:"ca_file,omitempty"`
}

// LinkTrust is what the phone trusts for car certifications on the local link (LocalSend's
// gatewayKeys): GatewayKeys, or GatewayKey in a session without them; nil for no session.
func (s *Session) LinkTrust() []string {
	switch {
	case s == nil:
		return nil
	case len(s.GatewayKeys) > 0:
		return s.GatewayKeys
	case s.GatewayKey != "":
		return []string{s.GatewayKey}
	}
	return nil
}

// Client is the gateway's HTTP API with the session's app token.
func (s *Session) Client() *api.Client {
	if s == nil {
		return &api.Client{} // every call answers that there is no login session
	}
	c := api.NewClient(s.Gateway, s.Token)
	if s.CAFile != "" {
		hc, err := tlsconf.HTTPClient(s.CAFile, api.DefaultTimeout)
		if err != nil {
			// A CA file that went missing after login: fail every call, never fall back.
			hc = &http.Client{Transport: failingTransport{err}}
		}
		c.HTTP = hc
	}
	return c
}

// failingTransport answers every request with err.
type failingTransport struct{ err error }

func (t failingTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, t.err }

// Login authenticates user with password (and a TOTP code where the policy needs one) at the
// gateway and returns the app's session, with a new MQTT client id.
func Login(ctx context.Context, gatewayURL, user, password, totp string) (*Session, error) {
	return LoginCA(ctx, gatewayURL, "", user, password, totp)
}

// LoginCA is Login that verifies the gateway (and later the broker) with the PEM CA
// certificate in caFile ("": the system's roots).
func LoginCA(ctx context.Context, gatewayURL, caFile, user, password, totp string) (*Session, error) {
	gatewayURL = strings.TrimRight(gatewayURL, "/")
	r, err := (&Session{Gateway: gatewayURL, CAFile: caFile}).Client().Login(ctx, user, password, totp)
	if err != nil {
		return nil, err
	}
	s := &Session{Gateway: gatewayURL, User: r.User, Token: r.Token, ExpiresAtMs: r.ExpiresAtMs,
		ClientIDPrefix: r.ClientIDPrefix, BrokerURL: r.BrokerURL, GatewayKey: r.GatewayKey, GatewayKeys: r.GatewayKeys, CAFile: caFile}
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	s.ClientID = s.ClientIDPrefix + hex.EncodeToString(suffix)
	return s, nil
}

// App is a connected phone app.
type App struct {
	sess   *Session
	client mqttc.Client
	clock  clock.Clock

	mu      sync.Mutex
	key     *sign.Signer // signs every command; nil until SetKey
	waiters map[string]chan protocol.Reply
}

// ConnectOptions tune ConnectWith. Zero values take the defaults given per field.
type ConnectOptions struct {
	// BrokerURL overrides the broker the gateway advertised at login.
	BrokerURL string
	// Key is the phone key that signs every command (see SetKey).
	Key *sign.Signer
	// ConnectTimeout bounds one connection attempt; default 5 s. Dial retries unreachable
	// brokers until ctx ends, so ctx bounds the whole connect.
	ConnectTimeout time.Duration
	// Logger receives connection events; default discards.
	Logger *slog.Logger
	// Clock dates the commands and times the wait for a command's expiry; default the real
	// clock. The connect and publish timeouts are network timeouts and run on real time.
	Clock clock.Clock
}

// Connect opens the app's MQTT session (brokerURL overrides the one the gateway advertised)
// and subscribes to its replies. Give the app its phone key with SetKey before Send.
func Connect(ctx context.Context, s *Session, brokerURL string, logger *slog.Logger) (*App, error) {
	return ConnectWith(ctx, s, ConnectOptions{BrokerURL: brokerURL, Logger: logger})
}

// ConnectWith is Connect with every option.
func ConnectWith(ctx context.Context, s *Session, o ConnectOptions) (*App, error) {
	brokerURL := o.BrokerURL
	if brokerURL == "" {
		brokerURL = s.BrokerURL
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	clientID := s.ClientID
	if clientID == "" {
		suffix := make([]byte, 6)
		_, _ = rand.Read(suffix)
		clientID = s.ClientIDPrefix + hex.EncodeToString(suffix)
	}
	a := &App{sess: s, clock: clock.Or(o.Clock), key: o.Key, waiters: map[string]chan protocol.Reply{}}
	var tlsCfg *tls.Config
	if s.CAFile != "" && brokerSecure(brokerURL) {
		var err error
		if tlsCfg, err = tlsconf.ClientConfig(s.CAFile); err != nil {
			return nil, err
		}
	}
	c, err := mqttc.Dial(ctx, mqttc.Options{
		BrokerURL: brokerURL, ClientID: clientID, TLS: tlsCfg,
		Username: s.User, Password: s.Token, Logger: logger,
		ConnectTimeout: o.ConnectTimeout,
	})
	if err != nil {
		return nil, err
	}
	a.client = c
	if err := c.Subscribe(ctx, protocol.AppTopic(s.User, protocol.SuffixReply), 1, a.onReply); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribe to replies: %w", err)
	}
	return a, nil
}

// brokerSecure reports whether a broker URL is one of TLS.
func brokerSecure(brokerURL string) bool {
	u, err := url.Parse(brokerURL)
	return err == nil && tlsconf.SecureScheme(u.Scheme)
}

// SetKey sets the phone key that signs every command Send publishes.
func (a *App) SetKey(key *sign.Signer) {
	a.mu.Lock()
	a.key = key
	a.mu.Unlock()
}

func (a *App) signer() *sign.Signer {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.key
}

// Close disconnects.
func (a *App) Close() error { return a.client.Close() }

func (a *App) onReply(m mqttc.Message) {
	var r protocol.Reply
	if err := protocol.Decode(m.Payload, &r); err != nil {
		return
	}
	a.mu.Lock()
	ch, ok := a.waiters[r.ID]
	a.mu.Unlock()
	if ok {
		select {
		case ch <- r:
		default: // a waiter takes at most a handful of replies; never block the client
		}
	}
}

// Request is one command to send.
type Request struct {
	VIN      string
	Action   protocol.Action
	TOTP     string        // cloud path only: the gateway checks it, the car never sees it
	Lifetime time.Duration // default protocol.DefaultCommandLifetimeMs
	ID       string        // default a new UUIDv7
}

// NewCommand builds the command document for r, naming the app's key when it has one.
func (a *App) NewCommand(r Request) protocol.Command {
	keyID := ""
	if k := a.signer(); k != nil {
		keyID = k.KID()
	}
	return newCommand(a.sess.User, keyID, r, a.clock.Now())
}

// newCommand builds the command document user sends with key keyID at now.
func newCommand(user, keyID string, r Request, now time.Time) protocol.Command {
	life := r.Lifetime
	if life <= 0 {
		life = protocol.DefaultCommandLifetimeMs * time.Millisecond
	}
	id := r.ID
	if id == "" {
		id = newCommandID()
	}
	return protocol.Command{V: protocol.Version, ID: id, VIN: r.VIN, Action: r.Action, KeyID: keyID, User: user,
		IssuedAtMs: now.UnixMilli(), ExpiresAtMs: now.Add(life).UnixMilli()}
}

// newCommandID returns a new UUIDv7 (time-ordered, so audit logs sort by it).
func newCommandID() string {
	u, err := uuid.NewV7()
	if err != nil {
		u = uuid.New()
	}
	return u.String()
}

// SignCommand stamps cmd with the key's id and signs its JSON bytes: the envelope carries
// those exact bytes, the signature and the key id. Only the signature and the key id leave
// the phone; the private key never does.
func SignCommand(key *sign.Signer, cmd protocol.Command) (protocol.Command, protocol.Envelope, error) {
	if key == nil {
		return cmd, protocol.Envelope{}, ErrNoKey
	}
	cmd.KeyID = key.KID()
	doc, err := json.Marshal(cmd)
	if err != nil {
		return cmd, protocol.Envelope{}, fmt.Errorf("encode command: %w", err)
	}
	env, err := key.Sign(doc)
	if err != nil {
		return cmd, protocol.Envelope{}, err
	}
	return cmd, env, nil
}

// Send signs the request with the app's phone key, publishes it and calls onReply for each
// reply until the terminal one, which it returns. It gives up when ctx ends or the command's
// expiry plus a margin passes. Without a key (SetKey) it returns ErrNoKey.
func (a *App) Send(ctx context.Context, r Request, onReply func(protocol.Reply)) (protocol.Reply, error) {
	return a.send(ctx, r, onReply, time.Time{})
}

// send is Send; a non-zero firstReplyBy makes it give up with errCloudSilent when no reply at
// all has come by then.
func (a *App) send(ctx context.Context, r Request, onReply func(protocol.Reply), firstReplyBy time.Time) (protocol.Reply, error) {
	key := a.signer()
	if key == nil {
		return protocol.Reply{}, ErrNoKey
	}
	cmd, env, err := SignCommand(key, a.NewCommand(r))
	if err != nil {
		return protocol.Reply{}, err
	}
	payload, err := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: env, TOTP: r.TOTP})
	if err != nil {
		return protocol.Reply{}, err
	}
	return a.follow(ctx, cmd.ID, time.UnixMilli(cmd.ExpiresAtMs), payload, onReply, firstReplyBy)
}

// PublishRaw publishes payload on the user's request topic without waiting for anything.
func (a *App) PublishRaw(ctx context.Context, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return a.client.Publish(ctx, protocol.AppTopic(a.sess.User, protocol.SuffixCmd), 1, false, payload)
}

// SendRaw publishes payload as a request with the given id and follows its replies; tests use
// it to send malformed, unsigned or replayed requests.
func (a *App) SendRaw(ctx context.Context, id string, expiresAt time.Time, payload []byte, onReply func(protocol.Reply)) (protocol.Reply, error) {
	return a.follow(ctx, id, expiresAt, payload, onReply, time.Time{})
}

// ErrNoTerminalReply means the gateway answered a request (or took it) but sent no terminal
// reply in time: the command may or may not have run.
var ErrNoTerminalReply = errors.New("no terminal reply from the gateway")

// errCloudSilent: the request went to the broker but no reply came by the first-reply
// deadline. errNotPublished: the broker did not confirm the request. Both let SendAuto fall
// back to the local link; nothing after a first reply does.
var (
	errCloudSilent  = errors.New("no reply from the cloud")
	errNotPublished = errors.New("request not confirmed by the broker")
)

func (a *App) follow(ctx context.Context, id string, expiresAt time.Time, payload []byte, onReply func(protocol.Reply), firstReplyBy time.Time) (protocol.Reply, error) {
	ch := make(chan protocol.Reply, 8)
	a.mu.Lock()
	if _, busy := a.waiters[id]; busy {
		a.mu.Unlock()
		return protocol.Reply{}, errors.New("a request with this id is already in flight")
	}
	a.waiters[id] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.waiters, id)
		a.mu.Unlock()
	}()
	publishWithin := 5 * time.Second
	if !firstReplyBy.IsZero() {
		publishWithin = min(publishWithin, time.Until(firstReplyBy))
	}
	pctx, cancel := context.WithTimeout(ctx, publishWithin)
	err := a.client.Publish(pctx, protocol.AppTopic(a.sess.User, protocol.SuffixCmd), 1, false, payload)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return protocol.Reply{}, ctx.Err()
		}
		if !firstReplyBy.IsZero() && !time.Now().Before(firstReplyBy) {
			return protocol.Reply{}, fmt.Errorf("%w (publish: %w)", errCloudSilent, err)
		}
		return protocol.Reply{}, fmt.Errorf("publish request: %w (%w)", errNotPublished, err)
	}
	// The gateway answers expired shortly after expiry; wait a little longer than that.
	deadline, expired := a.clock.NewTimer(a.clock.Until(expiresAt) + 5*time.Second)
	defer deadline.Stop()
	var first <-chan time.Time // nil (never fires) unless a first-reply deadline is set
	if !firstReplyBy.IsZero() {
		t := time.NewTimer(time.Until(firstReplyBy))
		defer t.Stop()
		first = t.C
	}
	for {
		select {
		case r := <-ch:
			first = nil // the cloud answered: from here on its answer is final
			if onReply != nil {
				onReply(r)
			}
			if protocol.Terminal(r.Status) {
				return r, nil
			}
		case <-first:
			return protocol.Reply{}, errCloudSilent
		case <-expired:
			return protocol.Reply{}, fmt.Errorf("%w for %s", ErrNoTerminalReply, id)
		case <-ctx.Done():
			return protocol.Reply{}, ctx.Err()
		}
	}
}
