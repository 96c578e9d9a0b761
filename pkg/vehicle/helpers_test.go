package vehicle

import (
	"encoding/json"
	"math/rand/v2"
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

const (
	testVIN  = "WVWZZZ1JZXW000001"
	otherVIN = "WVWZZZ1JZXW000002"
)

// newClock is a fake clock at t.
func newClock(t time.Time) *clocktest.Fake { return clocktest.New(t) }

// testPhone is a phone with its digital key.
type testPhone struct {
	signer *sign.Signer
	key    protocol.WhitelistKey
}

func newTestPhone(t testing.TB, user string, role protocol.Role, channels ...string) *testPhone {
	t.Helper()
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return phoneFromSigner(t, s, user, role, channels...)
}

func phoneFromSigner(t testing.TB, s *sign.Signer, user string, role protocol.Role, channels ...string) *testPhone {
	t.Helper()
	pub, err := sign.EncodePublic(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &testPhone{signer: s, key: protocol.WhitelistKey{
		ID: s.KID(), Pub: pub, User: user, Role: role, Channels: channels, Label: user + "'s phone",
	}}
}

// sign signs cmd with the phone's key, filling in key_id and user when they are empty.
func (p *testPhone) sign(t testing.TB, cmd protocol.Command) protocol.Envelope {
	t.Helper()
	if cmd.KeyID == "" {
		cmd.KeyID = p.key.ID
	}
	if cmd.User == "" {
		cmd.User = p.key.User
	}
	env, err := p.signer.Seal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// cast is every kind of key a car meets, valid around a point in time: owner alice and valet
// victor on both channels, a revoked key, one not yet valid, one expired, a cloud-only and a
// local-only key, and sam's phone, which is on no whitelist.
type cast struct {
	owner, valet, revoked, notYet, expired, cloudOnly, localOnly, stranger *testPhone
}

func newCast(t testing.TB, at time.Time) *cast {
	both := []string{protocol.ChannelCloud, protocol.ChannelLocal}
	c := &cast{
		owner:     newTestPhone(t, "alice", protocol.RoleOwner, both...),
		valet:     newTestPhone(t, "victor", protocol.RoleValet, both...),
		revoked:   newTestPhone(t, "rob", protocol.RoleDriver, both...),
		notYet:    newTestPhone(t, "nora", protocol.RoleDriver, both...),
		expired:   newTestPhone(t, "eve", protocol.RoleDriver, both...),
		cloudOnly: newTestPhone(t, "carla", protocol.RoleDriver, protocol.ChannelCloud),
		localOnly: newTestPhone(t, "luke", protocol.RoleDriver, protocol.ChannelLocal),
		stranger:  newTestPhone(t, "sam", protocol.RoleOwner, both...),
	}
	ms := at.UnixMilli()
	c.revoked.key.RevokedAtMs = ms - 1000
	c.notYet.key.NotBeforeMs = ms + time.Hour.Milliseconds()
	c.expired.key.NotBeforeMs, c.expired.key.NotAfterMs = ms-2*time.Hour.Milliseconds(), ms-time.Hour.Milliseconds()
	return c
}

// keys is the whitelist of the cast: everyone but the stranger.
func (c *cast) keys() []protocol.WhitelistKey {
	var out []protocol.WhitelistKey
	for _, p := range []*testPhone{c.owner, c.valet, c.revoked, c.notYet, c.expired, c.cloudOnly, c.localOnly} {
		out = append(out, p.key)
	}
	return out
}

// testGateway signs grants and whitelists like the gateway does, for a cast of phones.
type testGateway struct {
	signer *sign.Signer
	cast   *cast
}

func newTestGateway(t testing.TB) *testGateway { return newTestGatewayAt(t, t0) }

// newTestGatewayAt makes a gateway whose cast's keys are valid (or not) around at.
func newTestGatewayAt(t testing.TB, at time.Time) *testGateway {
	t.Helper()
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &testGateway{signer: s, cast: newCast(t, at)}
}

func (g *testGateway) creds(t testing.TB, vin string) protocol.Credentials {
	t.Helper()
	return protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: "token-" + vin, GatewayKey: encodePub(t, g.signer)}
}

func encodePub(t testing.TB, s *sign.Signer) string {
	t.Helper()
	pub, err := sign.EncodePublic(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// wlSpec describes one message for v/{vin}/keys; the zero fields are filled in by whitelist.
type wlSpec struct {
	vin     string // defaults to testVIN
	version uint64 // defaults to 1
	keys    []protocol.WhitelistKey
	noKeys  bool     // an empty whitelist instead of the cast's keys
	trust   []string // the trust list it carries
	signer  *sign.Signer
	tamper  bool // change the document after signing
}

func (g *testGateway) whitelist(t testing.TB, s wlSpec) []byte {
	t.Helper()
	wl := protocol.Whitelist{VIN: s.vin, Version: s.version, IssuedAtMs: t0.UnixMilli(), Keys: s.keys, Trust: s.trust}
	if wl.VIN == "" {
		wl.VIN = testVIN
	}
	if wl.Version == 0 {
		wl.Version = 1
	}
	if wl.Keys == nil && !s.noKeys {
		wl.Keys = g.cast.keys()
	}
	signer := g.signer
	if s.signer != nil {
		signer = s.signer
	}
	env, err := whitelist.Sign(signer, wl)
	if err != nil {
		t.Fatal(err)
	}
	if s.tamper {
		wl.Keys = append(wl.Keys, g.cast.stranger.key)
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

// install gives car a whitelist and fails unless it is acknowledged.
func install(t testing.TB, car *Car, payload []byte) *protocol.KeysAck {
	t.Helper()
	ack, err := car.HandleWhitelist(payload)
	if err != nil {
		t.Fatalf("whitelist refused: %v", err)
	}
	return ack
}

// cmdSpec describes one message for v/{vin}/cmd; the zero fields are filled in by build.
type cmdSpec struct {
	cmd         protocol.Command
	phone       *testPhone // signs the command; defaults to the cast's owner
	unsigned    bool       // no phone signature at all
	phoneKID    string     // the kid the envelope names, instead of the signer's
	tamperCmd   bool       // change the command document after the phone signed it
	noGrant     bool
	grantVIN    string // defaults to cmd.VIN
	grantSHA    string // defaults to the hash of the command document
	grantUser   string // defaults to the phone's user
	grantExpMs  int64  // defaults to the command's expiry
	grantSigner *sign.Signer
	tamperGrant bool // swap the grant document after signing
}

// newCmd returns a valid command for vin at now; the phone that signs it fills in key_id and
// user.
func newCmd(vin string, action protocol.Action, now time.Time) protocol.Command {
	return protocol.Command{
		V:           protocol.Version,
		ID:          uuid.Must(uuid.NewV7()).String(),
		VIN:         vin,
		Action:      action,
		IssuedAtMs:  now.UnixMilli(),
		ExpiresAtMs: now.UnixMilli() + protocol.DefaultCommandLifetimeMs,
	}
}

// phoneEnvelope is the command envelope of a spec, signed (or not, or tampered with) as it says.
func (g *testGateway) phoneEnvelope(t testing.TB, s cmdSpec) protocol.Envelope {
	t.Helper()
	phone := s.phone
	if phone == nil {
		phone = g.cast.owner
	}
	env := phone.sign(t, s.cmd)
	if s.unsigned {
		env.Sig, env.KID = "", ""
	}
	if s.phoneKID != "" {
		env.KID = s.phoneKID
	}
	if s.tamperCmd {
		doc, _ := env.DocBytes()
		var cmd protocol.Command
		json.Unmarshal(doc, &cmd)
		cmd.Action = protocol.ActionOpenTrunk
		b, _ := json.Marshal(cmd)
		env.Doc = protocol.EncodeB64(b)
	}
	return env
}

func (g *testGateway) build(t testing.TB, s cmdSpec) []byte {
	t.Helper()
	phone := s.phone
	if phone == nil {
		phone = g.cast.owner
	}
	cmdEnv := g.phoneEnvelope(t, s)
	sum, err := cmdEnv.DocSHA256()
	if err != nil {
		t.Fatal(err)
	}
	grant := protocol.Grant{
		V:           protocol.Version,
		CmdSHA256:   sum,
		VIN:         s.cmd.VIN,
		User:        phone.key.User,
		Factors:     []string{"key", "totp"},
		ExpiresAtMs: s.cmd.ExpiresAtMs,
	}
	if s.grantVIN != "" {
		grant.VIN = s.grantVIN
	}
	if s.grantSHA != "" {
		grant.CmdSHA256 = s.grantSHA
	}
	if s.grantUser != "" {
		grant.User = s.grantUser
	}
	if s.grantExpMs != 0 {
		grant.ExpiresAtMs = s.grantExpMs
	}
	signer := g.signer
	if s.grantSigner != nil {
		signer = s.grantSigner
	}
	genv, err := signer.Seal(grant)
	if err != nil {
		t.Fatal(err)
	}
	if s.tamperGrant {
		grant.Factors = []string{"key", "totp", "extra"}
		b, _ := json.Marshal(grant)
		genv.Doc = protocol.EncodeB64(b)
	}
	msg := protocol.VehicleCommand{V: protocol.Version, Command: cmdEnv, Grant: genv}
	if s.noGrant {
		msg.Grant = protocol.Envelope{}
	}
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// local is the body of a local-link command request for a spec (only the phone fields count).
func (g *testGateway) local(t testing.TB, s cmdSpec) []byte {
	t.Helper()
	b, err := json.Marshal(protocol.LocalRequest{V: protocol.Version, Command: g.phoneEnvelope(t, s)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openTestStore(t testing.TB, dir string) *carstore.Store {
	t.Helper()
	s, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newTestCar makes a car with what the store holds of it: no whitelist for a new car.
func newTestCar(t testing.TB, st *carstore.Store, creds protocol.Credentials, clock *clocktest.Fake) *Car {
	t.Helper()
	car, err := NewCar(st, creds, CarOptions{Clock: clock, Rand: rand.New(rand.NewPCG(1, 2))})
	if err != nil {
		t.Fatal(err)
	}
	return car
}

// newKeyedCar makes testVIN's car and gives it the cast's whitelist (version 1).
func newKeyedCar(t testing.TB, st *carstore.Store, gw *testGateway, clock *clocktest.Fake) *Car {
	t.Helper()
	car := newTestCar(t, st, gw.creds(t, testVIN), clock)
	install(t, car, gw.whitelist(t, wlSpec{}))
	return car
}
