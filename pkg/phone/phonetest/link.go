// Package phonetest has test doubles for the phone's peers: a car's local link that follows
// the link contract (challenge, single-use nonce, the car's proof of identity with a link key
// the link's own gateway certified, signed command checked against the car's whitelist with
// pkg/whitelist), so that phone and CLI tests need no simulated car.
package phonetest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

// Link is a fake local link for any number of cars, on an httptest server on loopback.
type Link struct {
	srv *httptest.Server

	// gateway certifies each car's link key (see GatewayKey); linkKeys are the cars' keys and
	// certifications, absent for a car added with AddUncertifiedCar.
	gateway  *sign.Signer
	linkKeys map[string]linkIdentity

	mu       sync.Mutex
	cars     map[string]*protocol.Whitelist
	nonces   map[string]nonce         // nonce -> what it was issued for
	executed map[string]bool          // command ids, as a car's replay cache
	bodies   [][]byte                 // every request body received, in order
	commands []protocol.Command       // every command the link decoded, in order
	hold     map[string]chan struct{} // vin -> closed when the link may answer (Hold)
	conns    int                      // connections accepted
	open     int                      // connections not yet closed

	state map[protocol.Action]string // action -> message of a refusal for the car's state
}

type linkIdentity struct {
	key  ed25519.PrivateKey
	cert protocol.Envelope
}

type nonce struct {
	vin         string
	expiresAtMs int64
	used        bool
}

// NewLink starts a link; the test's cleanup stops it.
func NewLink(t testing.TB) *Link {
	gw, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{gateway: gw, linkKeys: map[string]linkIdentity{}, cars: map[string]*protocol.Whitelist{}, nonces: map[string]nonce{}, executed: map[string]bool{},
		hold: map[string]chan struct{}{}, state: map[protocol.Action]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/link/{vin}/challenge", l.challenge)
	mux.HandleFunc("POST /v1/link/{vin}/command", l.command)
	l.srv = httptest.NewUnstartedServer(mux)
	l.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch st {
		case http.StateNew:
			l.conns++
			l.open++
		case http.StateClosed, http.StateHijacked:
			l.open--
		}
	}
	l.srv.Start()
	t.Cleanup(func() {
		l.mu.Lock()
		for _, ch := range l.hold {
			close(ch)
		}
		l.hold = map[string]chan struct{}{}
		l.mu.Unlock()
		l.srv.Close()
	})
	return l
}

// Conns returns how many connections the link accepted and how many of them are still open.
func (l *Link) Conns() (accepted, open int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conns, l.open
}

// Addr is the link's host:port.
func (l *Link) Addr() string { return l.srv.Listener.Addr().String() }

// GatewayKey is the public key (base64url DER) of the gateway that certified the link's cars:
// what a phone passes to phone.LocalSend to trust them.
func (l *Link) GatewayKey() string {
	pub, err := sign.EncodePublic(l.gateway.Public())
	if err != nil {
		panic(err)
	}
	return pub
}

// AddCar serves car vin with a whitelist of keys, and a link key GatewayKey certified (valid
// from an hour ago for a day), with which it proves itself to a phone.
func (l *Link) AddCar(vin string, keys ...protocol.WhitelistKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	cert, err := sign.CertifyLinkKey(l.gateway, vin, pub, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		panic(err)
	}
	l.AddUncertifiedCar(vin, keys...)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.linkKeys[vin] = linkIdentity{key: priv, cert: cert}
}

// AddUncertifiedCar serves car vin with a whitelist of keys but no link certification: a car
// provisioned before cars had one, which phones refuse.
func (l *Link) AddUncertifiedCar(vin string, keys ...protocol.WhitelistKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cars[vin] = &protocol.Whitelist{V: protocol.Version, VIN: vin, Version: 1, Keys: keys}
	delete(l.linkKeys, vin)
}

// Hold makes the link keep every request for car vin waiting until the test ends: a car that
// does not answer.
func (l *Link) Hold(vin string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hold[vin] = make(chan struct{})
}

// RefuseForState makes the link refuse action as a car refuses it for its state: forbidden,
// with msg for the user ("the trunk cannot open while the car moves").
func (l *Link) RefuseForState(action protocol.Action, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state[action] = msg
}

// Bodies returns every request body the link received.
func (l *Link) Bodies() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.bodies...)
}

// Commands returns every command document the link received, verified or not.
func (l *Link) Commands() []protocol.Command {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]protocol.Command(nil), l.commands...)
}

// Requests is how many requests the link received.
func (l *Link) Requests() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.bodies)
}

// MarkExecuted puts id in the replay cache, as if the car had executed it (by the cloud).
func (l *Link) MarkExecuted(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.executed[id] = true
}

// KeyFor is the whitelist entry of phone key s for user, with role and channels (both when
// none are given).
func KeyFor(s *sign.Signer, user string, role protocol.Role, channels ...string) protocol.WhitelistKey {
	pub, err := sign.EncodePublic(s.Public())
	if err != nil {
		panic(err)
	}
	if len(channels) == 0 {
		channels = []string{protocol.ChannelCloud, protocol.ChannelLocal}
	}
	return protocol.WhitelistKey{ID: s.KID(), Pub: pub, User: user, Role: role, Channels: channels}
}

// receive records the body and returns the car, or answers 404 and returns nil.
func (l *Link) receive(w http.ResponseWriter, r *http.Request) (*protocol.Whitelist, []byte) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, protocol.MaxPayloadBytes+1))
	vin := r.PathValue("vin")
	l.mu.Lock()
	l.bodies = append(l.bodies, body)
	wl := l.cars[vin]
	hold := l.hold[vin]
	l.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-r.Context().Done():
		}
		return nil, nil
	}
	if wl == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": string(protocol.ReasonVehicleUnknown), "message": "no such car on this link"})
		return nil, nil
	}
	return wl, body
}

func (l *Link) challenge(w http.ResponseWriter, r *http.Request) {
	wl, body := l.receive(w, r)
	if wl == nil {
		return
	}
	var req protocol.ChallengeRequest
	if len(body) > 0 {
		if err := json.Unmarshal(body, &req); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": string(protocol.ReasonBadRequest), "message": "not a challenge request"})
			return
		}
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	ch := protocol.Challenge{V: protocol.Version, VIN: wl.VIN, Nonce: protocol.EncodeB64(b),
		ExpiresAtMs: time.Now().Add(protocol.ChallengeLifetimeMs * time.Millisecond).UnixMilli()}
	l.mu.Lock()
	l.nonces[ch.Nonce] = nonce{vin: wl.VIN, expiresAtMs: ch.ExpiresAtMs}
	id, certified := l.linkKeys[wl.VIN]
	l.mu.Unlock()
	if certified && req.PhoneNonce != "" {
		proof, err := sign.ProveCar(id.key, id.cert, req, ch)
		if err != nil {
			panic(err)
		}
		ch.Proof = proof
	}
	writeJSON(w, http.StatusOK, ch)
}

func (l *Link) command(w http.ResponseWriter, r *http.Request) {
	wl, body := l.receive(w, r)
	if wl == nil {
		return
	}
	var req protocol.LocalRequest
	if err := protocol.Decode(body, &req); err != nil || req.V != protocol.Version {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": string(protocol.ReasonBadRequest), "message": "not a local request"})
		return
	}
	now := time.Now()
	cmd, _, err := whitelist.VerifyCommand(wl, req.Command, protocol.ChannelLocal, now)
	l.mu.Lock()
	defer l.mu.Unlock()
	if cmd.ID != "" {
		l.commands = append(l.commands, cmd)
	}
	res := protocol.Result{V: protocol.Version, ID: cmd.ID, Status: protocol.ResultRejected, TsMs: now.UnixMilli()}
	n, issued := l.nonces[cmd.Nonce]
	switch {
	case err != nil:
		res.Reason = protocol.ReasonOf(err)
	case cmd.VIN != wl.VIN:
		res.Reason = protocol.ReasonForbidden
	case !issued || n.used || n.vin != wl.VIN:
		res.Reason = protocol.ReasonBadRequest
	case now.UnixMilli() > n.expiresAtMs || now.UnixMilli() > cmd.ExpiresAtMs:
		res.Reason = protocol.ReasonExpired
	case l.executed[cmd.ID]:
		res.Reason = protocol.ReasonDuplicate
	case l.state[cmd.Action] != "":
		res.Reason, res.Message = protocol.ReasonForbidden, l.state[cmd.Action]
	default:
		l.executed[cmd.ID] = true
		res.Status = protocol.ResultExecuted
		res.State = map[string]any{protocol.VSSIsLocked: cmd.Action == protocol.ActionLock}
	}
	if issued {
		n.used = true
		l.nonces[cmd.Nonce] = n
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
