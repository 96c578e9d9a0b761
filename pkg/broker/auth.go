package broker

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"telematics/pkg/clock"
	"telematics/pkg/protocol"
	"telematics/pkg/token"
)

// Identity is who an admitted client is, read from its access token.
type Identity struct {
	Role protocol.Role
	// Subject is the token's sub: a VIN, a user name, or a gateway's or admin's name.
	Subject string
	// ExpiresAt is the token's exp; from then on the ACL grants the client nothing.
	ExpiresAt time.Time
	// TokenID is the token's jti.
	TokenID string
	// Gen is an app token's generation (token.Claims.Gen), for the retired-token check.
	Gen uint64
	// CertSerial is the serial (hex) of the device certificate a car was admitted with; ""
	// for a token. TokenID is then the id of the token the certificate was issued with.
	CertSerial string
}

// Why a CONNECT is refused. The log gets the error; the client gets the CONNACK code and, on
// MQTT 5, the refusal's reason string.
var (
	errNoCredentials   = refusal(protocol.ReasonUnauthenticated, "username and token required")
	errBadToken        = refusal(protocol.ReasonUnauthenticated, "invalid or expired token")
	errUsernameNotSub  = refusal(protocol.ReasonUnauthenticated, "username must be the token's subject")
	errBadSubject      = refusal(protocol.ReasonForbidden, "token subject is not valid for its role")
	errClientID        = refusal(protocol.ReasonForbidden, "client id does not match the token's subject")
	errWillTopic       = refusal(protocol.ReasonForbidden, "will topic not allowed")
	errTooManySessions = refusal(protocol.ReasonRateLimited, "too many connections for this identity")
	errTokenRetired    = refusal(protocol.ReasonUnauthenticated, "token retired: the credentials were reissued")
	errUserTokensEnded = refusal(protocol.ReasonUnauthenticated, "token ended: password changed or account disabled; log in again")
)

func refusal(r protocol.Reason, msg string) error {
	return &protocol.Refusal{Reason: r, Err: errors.New(msg)}
}

// sweepInterval is how often the AuthHook drops identities of clients that closed without
// mochi calling OnDisconnect (it skips the hook when writing the CONNACK fails).
const sweepInterval = 30 * time.Second

// AuthHook admits clients by their access token and remembers who they are.
//
// The MQTT username is the token's sub and the password is the token (an ES256 JWT verified
// with the gateway's public keys). The client id must be the sub for a vehicle (and the sub a
// VIN), start with sub+"-" for an app user, and be the sub or start with sub+"-" for a gateway
// or admin, so that no client can take over another identity's session. A will message must
// be one the client could publish. An app user has at most maxAppSessions live sessions.
//
// The decision is made in OnConnect so that a refusal carries "not authorized": 0x05 on
// MQTT 3.1.1 (mosquitto prints "not authorised"), 0x87 on MQTT 5 (0x97 "quota exceeded" for
// too many sessions). mochi's own refusal for OnConnectAuthenticate is "bad username or
// password" on MQTT 5. OnConnectAuthenticate then admits exactly the clients OnConnect
// recorded.
type AuthHook struct {
	mqtt.HookBase
	verifier       *token.Verifier
	acl            ACL
	maxAppSessions int
	clock          clock.Clock

	mu      sync.RWMutex
	clients map[*mqtt.Client]Identity // keyed by client, not id: a takeover is a new client
	apps    map[string]map[*mqtt.Client]struct{}
	// offline holds, by client id, the disconnected gateway clients whose session the broker
	// keeps (CleanSession false): mochi still delivers QoS 1 messages to them, queued until
	// they return, and the ACL checks each delivery against the identity they were admitted
	// with.
	offline   map[string]*mqtt.Client
	lastSweep time.Time
	isRetired func(Identity) bool
	// latest is, per client id, the client most recently admitted with it: a new connection
	// is admitted before it takes the old one's session over.
	latest map[string]*mqtt.Client
	// deviceCAs are the CAs whose car certificates admit a car (SetDeviceCAs); nil: none.
	deviceCAs atomic.Pointer[x509.CertPool]
}

// NewAuthHook returns the hook. acl checks will topics and supplies the clock; maxAppSessions
// bounds the live sessions per app user.
func NewAuthHook(v *token.Verifier, acl ACL, maxAppSessions int) *AuthHook {
	return &AuthHook{
		verifier:       v,
		acl:            acl,
		maxAppSessions: maxAppSessions,
		clock:          clock.Or(acl.Clock),
		clients:        map[*mqtt.Client]Identity{},
		apps:           map[string]map[*mqtt.Client]struct{}{},
		offline:        map[string]*mqtt.Client{},
		latest:         map[string]*mqtt.Client{},
	}
}

// ID names the hook in mochi's logs.
func (h *AuthHook) ID() string { return "telematics-auth" }

// Provides declares the events this hook handles.
func (h *AuthHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnDisconnect, mqtt.OnClientExpired, mqtt.OnSysInfoTick:
		return true
	}
	return false
}

// SetRetired installs the check for tokens that are still valid by signature and expiry but
// no longer current (a car whose credentials were reissued): f reports whether the token of
// id is retired. The gateway sets it on its embedded broker; nil accepts every valid token.
// Call Broker.DropRetired after a car's token is retired, to close the session it had opened.
func (h *AuthHook) SetRetired(f func(Identity) bool) {
	h.mu.Lock()
	h.isRetired = f
	h.mu.Unlock()
}

func (h *AuthHook) retired(id Identity) bool {
	h.mu.RLock()
	f := h.isRetired
	h.mu.RUnlock()
	return f != nil && f(id)
}

// retiredClient returns the car vin's open connection if its token is retired now
// (Broker.DropRetired closes it). A car's client id is its VIN, so the newest connection with
// that id is the one to look at; an older one is being taken over by it.
func (h *AuthHook) retiredClient(vin string) *mqtt.Client {
	h.mu.RLock()
	defer h.mu.RUnlock()
	cl := h.latest[vin]
	if cl == nil || cl.Closed() || h.isRetired == nil {
		return nil
	}
	if id, ok := h.clients[cl]; ok && id.Role == protocol.RoleVehicle && h.isRetired(id) {
		return cl
	}
	return nil
}

// appClients returns the admitted clients of app user.
func (h *AuthHook) appClients(user string) []*mqtt.Client {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]*mqtt.Client, 0, len(h.apps[user]))
	for cl := range h.apps[user] {
		out = append(out, cl)
	}
	return out
}

// superseded reports whether a newer connection with cl's client id has been admitted (it is
// taking cl's session over).
func (h *AuthHook) superseded(cl *mqtt.Client) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	latest, ok := h.latest[cl.ID]
	return ok && latest != cl
}

// Identity returns who cl is, if it is an admitted client: connected, or disconnected with a
// session the broker keeps (for the deliveries queued for it).
func (h *AuthHook) Identity(cl *mqtt.Client) (Identity, bool) {
	h.mu.RLock()
	id, ok := h.clients[cl]
	h.mu.RUnlock()
	return id, ok
}

// Sessions returns the number of admitted clients the hook currently knows: connected ones and
// disconnected ones whose session the broker keeps.
func (h *AuthHook) Sessions() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.clients)
}

// OnConnect authenticates cl. On refusal it sends the CONNACK itself and returns the error,
// which makes mochi close the connection.
func (h *AuthHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	id, err := h.authenticate(cl, pk)
	if err == nil {
		err = h.add(cl, id)
	}
	if err != nil {
		// Never the password: it is the token.
		h.Log.Info("mqtt connect refused", "client_id", clip(cl.ID), "username", clip(string(pk.Connect.Username)),
			"remote", cl.Net.Remote, "reason", protocol.ReasonOf(err), "error", err)
		h.refuse(cl, err)
		return err
	}
	h.Log.Debug("mqtt client admitted", "client_id", cl.ID, "role", id.Role, "sub", id.Subject, "remote", cl.Net.Remote)
	return nil
}

// OnConnectAuthenticate admits the clients OnConnect recorded, and nobody else.
func (h *AuthHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	_, ok := h.Identity(cl)
	return ok
}

// OnDisconnect forgets cl, unless it is the gateway and the broker keeps its session (expire
// false): then cl keeps its identity for the messages queued for it, until its session expires
// or it connects again.
func (h *AuthHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id, ok := h.clients[cl]
	// Only the gateway's session is kept: what is queued for it (results, journals, key
	// acknowledgements) is what must not be lost. A car's queued commands would have expired
	// and its whitelist is retained; every session of an app user gets all of that user's
	// replies, so abandoned app sessions would fill with them (mochi keeps 8,192 each and logs
	// every message beyond).
	// Superseded: a newer connection with this id was admitted (add runs before mochi's
	// takeover, which sets IsTakenOver only once it has disconnected this one).
	if !ok || expire || cl.IsTakenOver() || h.latest[cl.ID] != cl || id.Role != protocol.RoleGateway {
		h.removeLocked(cl)
		return
	}
	if old := h.offline[cl.ID]; old != nil && old != cl {
		delete(h.clients, old)
	}
	h.offline[cl.ID] = cl
}

// OnClientExpired forgets a disconnected client whose session the broker dropped.
func (h *AuthHook) OnClientExpired(cl *mqtt.Client) {
	h.remove(cl)
}

// OnSysInfoTick runs on mochi's event loop about once a second; every sweepInterval it drops
// the identities of clients whose connection is closed but whose OnDisconnect never came.
func (h *AuthHook) OnSysInfoTick(_ *system.Info) {
	now := h.clock.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.lastSweep) < sweepInterval {
		return
	}
	h.lastSweep = now
	for cl := range h.clients {
		if cl.Closed() && h.offline[cl.ID] != cl {
			h.removeLocked(cl)
		}
	}
}

func (h *AuthHook) authenticate(cl *mqtt.Client, pk packets.Packet) (Identity, error) {
	if chain := h.presentedChain(cl); chain != nil {
		return h.authenticateCert(cl, pk, chain) // a certificate decides alone (devicecert.go)
	}
	if !pk.Connect.UsernameFlag || !pk.Connect.PasswordFlag || len(pk.Connect.Password) == 0 {
		return Identity{}, errNoCredentials
	}
	claims, err := h.verifier.Verify(string(pk.Connect.Password))
	if err != nil {
		// The detail (expired, bad signature, malformed) is for the log; it never quotes
		// the token.
		return Identity{}, fmt.Errorf("%w (%v)", errBadToken, err)
	}
	if string(pk.Connect.Username) != claims.Subject {
		return Identity{}, errUsernameNotSub
	}
	id := Identity{Role: claims.Role, Subject: claims.Subject, ExpiresAt: claims.ExpiresAt.Time, TokenID: claims.ID, Gen: claims.Gen}
	if h.retired(id) {
		if id.Role == protocol.RoleApp {
			return Identity{}, errUserTokensEnded
		}
		return Identity{}, errTokenRetired
	}

	// cl.ID is the id mochi uses for the session (it assigns one when the client sent none).
	cid := cl.ID
	if cid == mqtt.InlineClientId {
		return Identity{}, errClientID // the embedded gateway's own client
	}
	switch id.Role {
	case protocol.RoleVehicle:
		if !protocol.ValidVIN(id.Subject) {
			return Identity{}, errBadSubject
		}
		if cid != id.Subject {
			return Identity{}, errClientID
		}
	case protocol.RoleApp:
		if !protocol.ValidUser(id.Subject) {
			return Identity{}, errBadSubject
		}
		// User names contain no '-', so the prefix names exactly one user.
		if !strings.HasPrefix(cid, id.Subject+"-") {
			return Identity{}, errClientID
		}
	case protocol.RoleGateway, protocol.RoleAdmin:
		if strings.ContainsAny(id.Subject, "/+#") {
			return Identity{}, errBadSubject
		}
		if cid != id.Subject && !strings.HasPrefix(cid, id.Subject+"-") {
			return Identity{}, errClientID
		}
	default:
		return Identity{}, errBadSubject
	}

	// mochi publishes the will on the client's behalf without asking the ACL, so it is
	// checked here, while the token is valid.
	if pk.Connect.WillFlag && !h.acl.Allow(id, pk.Connect.WillTopic, true) {
		return Identity{}, errWillTopic
	}
	return id, nil
}

// add records cl, enforcing the per-user session limit for apps. A live session with the same
// client id does not count: the new connection is about to take it over, and a phone
// reconnecting over a half-open connection must not be locked out by its own ghost.
func (h *AuthHook) add(cl *mqtt.Client, id Identity) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if id.Role == protocol.RoleApp {
		live := 0
		for other := range h.apps[id.Subject] {
			if other.ID != cl.ID && !other.Closed() {
				live++
			}
		}
		if live >= h.maxAppSessions {
			return errTooManySessions
		}
		set := h.apps[id.Subject]
		if set == nil {
			set = map[*mqtt.Client]struct{}{}
			h.apps[id.Subject] = set
		}
		set[cl] = struct{}{}
	}
	// The client takes its session back: the disconnected one it replaces is gone.
	if old := h.offline[cl.ID]; old != nil {
		h.removeLocked(old)
	}
	h.clients[cl] = id
	h.latest[cl.ID] = cl
	return nil
}

func (h *AuthHook) remove(cl *mqtt.Client) {
	h.mu.Lock()
	h.removeLocked(cl)
	h.mu.Unlock()
}

func (h *AuthHook) removeLocked(cl *mqtt.Client) {
	id, ok := h.clients[cl]
	if !ok {
		return
	}
	delete(h.clients, cl)
	if h.latest[cl.ID] == cl {
		delete(h.latest, cl.ID)
	}
	if h.offline[cl.ID] == cl {
		delete(h.offline, cl.ID)
	}
	if set := h.apps[id.Subject]; set != nil && id.Role == protocol.RoleApp {
		delete(set, cl)
		if len(set) == 0 {
			delete(h.apps, id.Subject)
		}
	}
}

// refuse sends the CONNACK that tells cl why it is refused.
func (h *AuthHook) refuse(cl *mqtt.Client, err error) {
	code := packets.ErrNotAuthorized // 0x87
	if errors.Is(err, errTooManySessions) {
		code = packets.ErrQuotaExceeded // 0x97
	}
	reason := code.Reason
	if r := new(protocol.Refusal); errors.As(err, &r) && r.Err != nil {
		reason += ": " + r.Err.Error()
	}
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Err3NotAuthorized // 0x05: MQTT 3.1.1 has no finer code
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connack},
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: reason},
	})
}
