package vehicle

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

const (
	testVIN  = "WVWZZZ1JZXW000001"
	otherVIN = "WVWZZZ1JZXW000002"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *fakeClock { return &fakeClock{t: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testGateway signs grants like the gateway does.
type testGateway struct {
	signer *sign.Signer
}

func newTestGateway(t testing.TB) *testGateway {
	t.Helper()
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return &testGateway{signer: s}
}

func (g *testGateway) creds(t testing.TB, vin string) protocol.Credentials {
	t.Helper()
	pub, err := sign.EncodePublic(g.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	return protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: "token-" + vin, GatewayKey: pub}
}

// cmdSpec describes one message for v/{vin}/cmd; the zero fields are filled in by build.
type cmdSpec struct {
	cmd         protocol.Command
	grantVIN    string // defaults to cmd.VIN
	grantSHA    string // defaults to the hash of the command document
	grantExpMs  int64  // defaults to the command's expiry
	grantSigner *sign.Signer
	tamperGrant bool // swap the grant document after signing
}

// newCmd returns a valid command for vin at now.
func newCmd(vin string, action protocol.Action, now time.Time) protocol.Command {
	return protocol.Command{
		V:           protocol.Version,
		ID:          uuid.Must(uuid.NewV7()).String(),
		VIN:         vin,
		Action:      action,
		KeyID:       "key-1",
		User:        "alice",
		IssuedAtMs:  now.UnixMilli(),
		ExpiresAtMs: now.UnixMilli() + protocol.DefaultCommandLifetimeMs,
	}
}

func (g *testGateway) build(t testing.TB, s cmdSpec) []byte {
	t.Helper()
	doc, err := json.Marshal(s.cmd)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(doc)
	grant := protocol.Grant{
		V:           protocol.Version,
		CmdSHA256:   hex.EncodeToString(sum[:]),
		VIN:         s.cmd.VIN,
		User:        s.cmd.User,
		Factors:     []string{"key", "totp"},
		ExpiresAtMs: s.cmd.ExpiresAtMs,
	}
	if s.grantVIN != "" {
		grant.VIN = s.grantVIN
	}
	if s.grantSHA != "" {
		grant.CmdSHA256 = s.grantSHA
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
	// The phone's signature is not checked yet (Authorizer seam); an unsigned command envelope
	// carries the document the grant binds to.
	msg := protocol.VehicleCommand{V: protocol.Version, Command: protocol.Envelope{Doc: protocol.EncodeB64(doc)}, Grant: genv}
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openTestStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := OpenStore(filepath.Join(dir, StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newTestCar(t testing.TB, st *Store, creds protocol.Credentials, clock *fakeClock) *Car {
	t.Helper()
	car, err := NewCar(st, creds, CarOptions{Now: clock.Now, Rand: rand.New(rand.NewPCG(1, 2))})
	if err != nil {
		t.Fatal(err)
	}
	return car
}

// eventually polls fn until it returns nil or timeout passes.
func eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
