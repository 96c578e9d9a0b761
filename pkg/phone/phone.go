// Package phone is the simulated phone app: it logs in to the gateway over HTTP, keeps its
// session, and sends commands to cars through the broker, following each request's replies
// until the terminal one.
package phone

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
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
	// ClientID is this login's MQTT client id ({user}-{random}). The gateway's 2FA step-up is
	// per session, so every command sent under one login shares it.
	ClientID string `json:"client_id"`
}

// APIError is an error answer from the gateway's HTTP API.
type APIError struct {
	Status  int
	Reason  protocol.Reason
	Message string
}

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("gateway answered %d %s", e.Status, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.Reason, e.Message)
}

// HTTP is the client used to talk to the gateway.
var httpClient = &http.Client{Timeout: 15 * time.Second}

// Call posts (or gets, with in == nil and method GET) JSON to the gateway and decodes the
// answer into out; error answers become *APIError.
func Call(ctx context.Context, method, url, bearer string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("gateway unreachable: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read gateway answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		_ = json.Unmarshal(b, &e)
		return &APIError{Status: resp.StatusCode, Reason: protocol.Reason(e.Error), Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("gateway answer is not the expected JSON: %w", err)
		}
	}
	return nil
}

// Login authenticates user with password (and a TOTP code where the policy needs one).
func Login(ctx context.Context, gatewayURL, user, password, totp string) (*Session, error) {
	gatewayURL = strings.TrimRight(gatewayURL, "/")
	var s Session
	err := Call(ctx, http.MethodPost, gatewayURL+"/v1/login", "",
		map[string]string{"username": user, "password": password, "totp": totp}, &s)
	if err != nil {
		return nil, err
	}
	s.Gateway = gatewayURL
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	s.ClientID = s.ClientIDPrefix + hex.EncodeToString(suffix)
	return &s, nil
}

// App is a connected phone app.
type App struct {
	sess   *Session
	client mqttc.Client
	now    func() time.Time

	mu      sync.Mutex
	waiters map[string]chan protocol.Reply
}

// Connect opens the app's MQTT session (brokerURL overrides the one the gateway advertised)
// and subscribes to its replies.
func Connect(ctx context.Context, s *Session, brokerURL string, logger *slog.Logger) (*App, error) {
	if brokerURL == "" {
		brokerURL = s.BrokerURL
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	clientID := s.ClientID
	if clientID == "" {
		suffix := make([]byte, 6)
		_, _ = rand.Read(suffix)
		clientID = s.ClientIDPrefix + hex.EncodeToString(suffix)
	}
	a := &App{sess: s, now: time.Now, waiters: map[string]chan protocol.Reply{}}
	c, err := mqttc.Dial(ctx, mqttc.Options{
		BrokerURL: brokerURL, ClientID: clientID,
		Username: s.User, Password: s.Token, Logger: logger,
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
	TOTP     string
	Lifetime time.Duration // default protocol.DefaultCommandLifetimeMs
	ID       string        // default a new UUIDv7
}

// NewCommand builds the command document for r.
func (a *App) NewCommand(r Request) protocol.Command {
	now := a.now()
	life := r.Lifetime
	if life <= 0 {
		life = protocol.DefaultCommandLifetimeMs * time.Millisecond
	}
	id := r.ID
	if id == "" {
		u, err := uuid.NewV7()
		if err != nil {
			u = uuid.New()
		}
		id = u.String()
	}
	return protocol.Command{V: protocol.Version, ID: id, VIN: r.VIN, Action: r.Action, User: a.sess.User,
		IssuedAtMs: now.UnixMilli(), ExpiresAtMs: now.Add(life).UnixMilli()}
}

// Send publishes the request and calls onReply for each reply until the terminal one, which
// it returns. It gives up when ctx ends or the command's expiry plus a margin passes.
func (a *App) Send(ctx context.Context, r Request, onReply func(protocol.Reply)) (protocol.Reply, error) {
	cmd := a.NewCommand(r)
	doc, err := json.Marshal(cmd)
	if err != nil {
		return protocol.Reply{}, err
	}
	// Phone keys sign commands once the digital-key issue lands; until then the envelope
	// carries the document unsigned and the gateway authorizes by token and role.
	payload, err := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: protocol.Envelope{Doc: protocol.EncodeB64(doc)}, TOTP: r.TOTP})
	if err != nil {
		return protocol.Reply{}, err
	}
	return a.SendRaw(ctx, cmd.ID, time.UnixMilli(cmd.ExpiresAtMs), payload, onReply)
}

// PublishRaw publishes payload on the user's request topic without waiting for anything.
func (a *App) PublishRaw(ctx context.Context, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return a.client.Publish(ctx, protocol.AppTopic(a.sess.User, protocol.SuffixCmd), 1, false, payload)
}

// SendRaw publishes payload as a request with the given id and follows its replies; tests use
// it to send malformed or replayed requests.
func (a *App) SendRaw(ctx context.Context, id string, expiresAt time.Time, payload []byte, onReply func(protocol.Reply)) (protocol.Reply, error) {
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
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := a.client.Publish(pctx, protocol.AppTopic(a.sess.User, protocol.SuffixCmd), 1, false, payload)
	cancel()
	if err != nil {
		return protocol.Reply{}, fmt.Errorf("publish request: %w", err)
	}
	// The gateway answers expired shortly after expiry; wait a little longer than that.
	deadline := time.NewTimer(time.Until(expiresAt) + 5*time.Second)
	defer deadline.Stop()
	for {
		select {
		case r := <-ch:
			if onReply != nil {
				onReply(r)
			}
			if protocol.Terminal(r.Status) {
				return r, nil
			}
		case <-deadline.C:
			return protocol.Reply{}, fmt.Errorf("no terminal reply for %s from the gateway", id)
		case <-ctx.Done():
			return protocol.Reply{}, ctx.Err()
		}
	}
}
