// Package vehicletest is the world around a simulated car, for the tests of pkg/vehicle and of
// the packages that run cars (the MQTT fleet, the local link): a gateway that signs whitelists
// and grants, a cast of phones with their keys, the commands they send, a settable clock, a car
// store in a temporary directory, and the phone's side of the local link. It builds no car
// itself, so that pkg/vehicle's own tests can use it.
package vehicletest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/whitelist"
)

// The VINs of the cars in tests.
const (
	VIN      = "WVWZZZ1JZXW000001"
	OtherVIN = "WVWZZZ1JZXW000002"
)

// T0 is the tests' fixed "now": NewGateway's keys are valid (or not) around it.
var T0 = time.UnixMilli(1_760_000_000_000)

// Clock is the tests' clock: a clocktest.Fake, which a car's CarOptions.Clock takes and tests
// move with Advance.
type Clock = clocktest.Fake

// NewClock returns a clock standing at t.
func NewClock(t time.Time) *Clock { return clocktest.New(t) }

// Phone is a phone with its digital key.
type Phone struct {
	Signer *sign.Signer
	Key    protocol.WhitelistKey
}

// NewPhone is a phone with a new key of user in role, usable on channels.
func NewPhone(t testing.TB, user string, role protocol.Role, channels ...string) *Phone {
	t.Helper()
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return PhoneFromSigner(t, s, user, role, channels...)
}

// PhoneFromSigner is NewPhone with the key s.
func PhoneFromSigner(t testing.TB, s *sign.Signer, user string, role protocol.Role, channels ...string) *Phone {
	t.Helper()
	pub, err := sign.EncodePublic(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &Phone{Signer: s, Key: protocol.WhitelistKey{
		ID: s.KID(), Pub: pub, User: user, Role: role, Channels: channels, Label: user + "'s phone",
	}}
}

// Sign signs cmd with the phone's key, filling in key_id and user when they are empty.
func (p *Phone) Sign(t testing.TB, cmd protocol.Command) protocol.Envelope {
	t.Helper()
	if cmd.KeyID == "" {
		cmd.KeyID = p.Key.ID
	}
	if cmd.User == "" {
		cmd.User = p.Key.User
	}
	env, err := p.Signer.Seal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// Cast is every kind of key a car meets, valid around a point in time: owner alice and valet
// victor on both channels, a revoked key, one not yet valid, one expired, a cloud-only and a
// local-only key, and sam's phone, which is on no whitelist.
type Cast struct {
	Owner, Valet, Revoked, NotYet, Expired, CloudOnly, LocalOnly, Stranger *Phone
}

// NewCast makes the cast with keys valid (or not) around at.
func NewCast(t testing.TB, at time.Time) *Cast {
	both := []string{protocol.ChannelCloud, protocol.ChannelLocal}
	c := &Cast{
		Owner:     NewPhone(t, "alice", protocol.RoleOwner, both...),
		Valet:     NewPhone(t, "victor", protocol.RoleValet, both...),
		Revoked:   NewPhone(t, "rob", protocol.RoleDriver, both...),
		NotYet:    NewPhone(t, "nora", protocol.RoleDriver, both...),
		Expired:   NewPhone(t, "eve", protocol.RoleDriver, both...),
		CloudOnly: NewPhone(t, "carla", protocol.RoleDriver, protocol.ChannelCloud),
		LocalOnly: NewPhone(t, "luke", protocol.RoleDriver, protocol.ChannelLocal),
		Stranger:  NewPhone(t, "sam", protocol.RoleOwner, both...),
	}
	ms := at.UnixMilli()
	c.Revoked.Key.RevokedAtMs = ms - 1000
	c.NotYet.Key.NotBeforeMs = ms + time.Hour.Milliseconds()
	c.Expired.Key.NotBeforeMs, c.Expired.Key.NotAfterMs = ms-2*time.Hour.Milliseconds(), ms-time.Hour.Milliseconds()
	return c
}

// Keys is the whitelist of the cast: everyone but the stranger.
func (c *Cast) Keys() []protocol.WhitelistKey {
	var out []protocol.WhitelistKey
	for _, p := range []*Phone{c.Owner, c.Valet, c.Revoked, c.NotYet, c.Expired, c.CloudOnly, c.LocalOnly} {
		out = append(out, p.Key)
	}
	return out
}

// Gateway signs grants and whitelists like the gateway does, for a cast of phones.
type Gateway struct {
	Signer *sign.Signer
	Cast   *Cast
	at     time.Time // the "now" the gateway was made for: link certifications are valid around it
}

// NewGateway makes a gateway with a new key whose cast's keys are valid (or not) around T0.
func NewGateway(t testing.TB) *Gateway { return NewGatewayAt(t, T0) }

// NewGatewayAt makes a gateway whose cast's keys are valid (or not) around at.
func NewGatewayAt(t testing.TB, at time.Time) *Gateway {
	t.Helper()
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &Gateway{Signer: s, Cast: NewCast(t, at), at: at}
}

// LinkCertLifetime is how long the link certifications of Creds are valid from the gateway's
// "now" (and they were issued a day before it).
const LinkCertLifetime = 365 * 24 * time.Hour

// Creds are vin's credentials naming the gateway's key, with a new link key the gateway
// certified (as `vehicle add` makes them).
func (g *Gateway) Creds(t testing.TB, vin string) protocol.Credentials {
	t.Helper()
	seed, cert, err := sign.NewLinkIdentity(g.Signer, vin, g.at.Add(-24*time.Hour), g.at.Add(LinkCertLifetime))
	if err != nil {
		t.Fatal(err)
	}
	return protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: "token-" + vin, GatewayKey: EncodePub(t, g.Signer),
		LinkKey: seed, LinkCert: &cert}
}

// PhoneTrust is what a phone that logged in to this gateway trusts for car certifications on
// the local link (phone.LocalSend's gatewayKeys).
func (g *Gateway) PhoneTrust(t testing.TB) []string {
	t.Helper()
	return []string{EncodePub(t, g.Signer)}
}

// EncodePub is s's public key as whitelists and credentials carry it.
func EncodePub(t testing.TB, s *sign.Signer) string {
	t.Helper()
	pub, err := sign.EncodePublic(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// WhitelistSpec describes one message for v/{vin}/keys; the zero fields are filled in by
// Gateway.Whitelist.
type WhitelistSpec struct {
	VIN     string // defaults to VIN
	Version uint64 // defaults to 1
	Keys    []protocol.WhitelistKey
	NoKeys  bool     // an empty whitelist instead of the cast's keys
	Trust   []string // the trust list it carries
	Signer  *sign.Signer
	Tamper  bool // change the document after signing
}

// Whitelist is the signed message for v/{vin}/keys that s describes.

func (g *Gateway) Whitelist(t testing.TB, s WhitelistSpec) []byte {
	t.Helper()
	wl := protocol.Whitelist{VIN: s.VIN, Version: s.Version, IssuedAtMs: T0.UnixMilli(), Keys: s.Keys, Trust: s.Trust}
	if wl.VIN == "" {
		wl.VIN = VIN
	}
	if wl.Version == 0 {
		wl.Version = 1
	}
	if wl.Keys == nil && !s.NoKeys {
		wl.Keys = g.Cast.Keys()
	}
	signer := g.Signer
	if s.Signer != nil {
		signer = s.Signer
	}
	env, err := whitelist.Sign(signer, wl)
	if err != nil {
		t.Fatal(err)
	}
	if s.Tamper {
		wl.Keys = append(wl.Keys, g.Cast.Stranger.Key)
		wl.V = protocol.Version
		b, _ := json.Marshal(wl)
		env.Doc = protocol.EncodeB64(b)
	}
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// WhitelistHandler is what Install needs of a car (*vehicle.Car).
type WhitelistHandler interface {
	HandleWhitelist(payload []byte) (*protocol.KeysAck, error)
}

// Install gives car a whitelist and fails unless it is acknowledged.
func Install(t testing.TB, car WhitelistHandler, payload []byte) *protocol.KeysAck {
	t.Helper()
	ack, err := car.HandleWhitelist(payload)
	if err != nil {
		t.Fatalf("whitelist refused: %v", err)
	}
	return ack
}

// CommandSpec describes one message for v/{vin}/cmd (Gateway.CloudCommand) or one local
// request (Gateway.LocalRequest); the zero fields are filled in.
type CommandSpec struct {
	Cmd         protocol.Command
	Phone       *Phone // signs the command; defaults to the cast's owner
	Unsigned    bool   // no phone signature at all
	PhoneKID    string // the kid the envelope names, instead of the signer's
	TamperCmd   bool   // change the command document after the phone signed it
	NoGrant     bool
	GrantVIN    string // defaults to Cmd.VIN
	GrantSHA    string // defaults to the hash of the command document
	GrantUser   string // defaults to the phone's user
	GrantExpMs  int64  // defaults to the command's expiry
	GrantSigner *sign.Signer
	TamperGrant bool // swap the grant document after signing
}

// NewCommand returns a valid command for vin at now; the phone that signs it fills in key_id and
// user.
func NewCommand(vin string, action protocol.Action, now time.Time) protocol.Command {
	return protocol.Command{
		V:           protocol.Version,
		ID:          uuid.Must(uuid.NewV7()).String(),
		VIN:         vin,
		Action:      action,
		IssuedAtMs:  now.UnixMilli(),
		ExpiresAtMs: now.UnixMilli() + protocol.DefaultCommandLifetimeMs,
	}
}

// PhoneEnvelope is the command envelope of a spec, signed (or not, or tampered with) as it says.
func (g *Gateway) PhoneEnvelope(t testing.TB, s CommandSpec) protocol.Envelope {
	t.Helper()
	phone := s.Phone
	if phone == nil {
		phone = g.Cast.Owner
	}
	env := phone.Sign(t, s.Cmd)
	if s.Unsigned {
		env.Sig, env.KID = "", ""
	}
	if s.PhoneKID != "" {
		env.KID = s.PhoneKID
	}
	if s.TamperCmd {
		doc, _ := env.DocBytes()
		var cmd protocol.Command
		json.Unmarshal(doc, &cmd)
		cmd.Action = protocol.ActionOpenTrunk
		b, _ := json.Marshal(cmd)
		env.Doc = protocol.EncodeB64(b)
	}
	return env
}

// CloudCommand is the message for v/{vin}/cmd that s describes: the phone's envelope and the
// gateway's grant.
func (g *Gateway) CloudCommand(t testing.TB, s CommandSpec) []byte {
	t.Helper()
	phone := s.Phone
	if phone == nil {
		phone = g.Cast.Owner
	}
	cmdEnv := g.PhoneEnvelope(t, s)
	sum, err := cmdEnv.DocSHA256()
	if err != nil {
		t.Fatal(err)
	}
	grant := protocol.Grant{
		V:           protocol.Version,
		CmdSHA256:   sum,
		VIN:         s.Cmd.VIN,
		User:        phone.Key.User,
		Factors:     []string{"key", "totp"},
		ExpiresAtMs: s.Cmd.ExpiresAtMs,
	}
	if s.GrantVIN != "" {
		grant.VIN = s.GrantVIN
	}
	if s.GrantSHA != "" {
		grant.CmdSHA256 = s.GrantSHA
	}
	if s.GrantUser != "" {
		grant.User = s.GrantUser
	}
	if s.GrantExpMs != 0 {
		grant.ExpiresAtMs = s.GrantExpMs
	}
	signer := g.Signer
	if s.GrantSigner != nil {
		signer = s.GrantSigner
	}
	genv, err := signer.Seal(grant)
	if err != nil {
		t.Fatal(err)
	}
	if s.TamperGrant {
		grant.Factors = []string{"key", "totp", "extra"}
		b, _ := json.Marshal(grant)
		genv.Doc = protocol.EncodeB64(b)
	}
	msg := protocol.VehicleCommand{V: protocol.Version, Command: cmdEnv, Grant: genv}
	if s.NoGrant {
		msg.Grant = protocol.Envelope{}
	}
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// LocalRequest is the body of a local-link command request for a spec (only the phone fields count).
func (g *Gateway) LocalRequest(t testing.TB, s CommandSpec) []byte {
	t.Helper()
	b, err := json.Marshal(protocol.LocalRequest{V: protocol.Version, Command: g.PhoneEnvelope(t, s)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// OpenStore opens the car store in dir, closed when the test ends.
func OpenStore(t testing.TB, dir string) *carstore.Store {
	t.Helper()
	s, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Journal is what st holds of vin's journal, all of it.
func Journal(t testing.TB, st *carstore.Store, vin string) []protocol.VehicleEvent {
	t.Helper()
	evs, err := st.Journal(vin, 0, carstore.MaxJournalEntries+10)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// LinkPhone is the phone's side of a local link at URL (a link.Server): it asks for challenges
// and posts commands, as of Clock.
type LinkPhone struct {
	URL    string // http://host:port
	Clock  *Clock
	Client *http.Client
}

// NewLinkPhone talks to the link at url (http://host:port) with a 10 s timeout.
func NewLinkPhone(url string, clock *Clock) *LinkPhone {
	return &LinkPhone{URL: url, Clock: clock, Client: &http.Client{Timeout: 10 * time.Second}}
}

// Post posts body to path and returns the status and the answer's body.
func (p *LinkPhone) Post(t testing.TB, path string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := p.Client.Post(p.URL+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// Challenge asks vin's car for a challenge and fails unless it gets one.
func (p *LinkPhone) Challenge(t testing.TB, vin string) protocol.Challenge {
	t.Helper()
	code, b := p.Post(t, "/v1/link/"+vin+"/challenge", nil)
	var ch protocol.Challenge
	if code != http.StatusOK || json.Unmarshal(b, &ch) != nil {
		t.Fatalf("challenge: %d %s", code, b)
	}
	return ch
}

// Command posts a local request for VIN and returns the car's answer; it fails unless the
// answer is 200 with a result.
func (p *LinkPhone) Command(t testing.TB, body []byte) protocol.Result {
	t.Helper()
	code, b := p.Post(t, "/v1/link/"+VIN+"/command", body)
	var res protocol.Result
	if code != http.StatusOK || json.Unmarshal(b, &res) != nil {
		t.Fatalf("command: %d %s", code, b)
	}
	return res
}

// LocalCommand is a command for vin at the phone's clock, carrying a fresh challenge of VIN.
func (p *LinkPhone) LocalCommand(t testing.TB, vin string, a protocol.Action) protocol.Command {
	t.Helper()
	c := NewCommand(vin, a, p.Clock.Now())
	c.Nonce = p.Challenge(t, VIN).Nonce
	return c
}
