package vehicle

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz/FuzzHandleCommand")

// fuzzKeyFile is a gateway key made for the fuzz corpus only: the seeds carry grants it signed,
// valid at t0, so that the fuzzer starts from messages that pass every check.
const fuzzKeyFile = "testdata/gateway-test-key.pem"

func fuzzGateway(t testing.TB) *testGateway {
	t.Helper()
	if _, err := os.Stat(fuzzKeyFile); err != nil && !*updateCorpus {
		t.Fatalf("%v: run go test -run TestUpdateFuzzCorpus -update-corpus", err)
	}
	s, _, err := sign.LoadOrCreate(fuzzKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &testGateway{signer: s}
}

// fuzzSeeds are real messages, valid and refused, at t0.
func fuzzSeeds(t testing.TB, gw *testGateway) map[string][]byte {
	forger, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	expired := newCmd(testVIN, protocol.ActionLock, t0.Add(-time.Minute))
	ahead := newCmd(testVIN, protocol.ActionLock, t0)
	ahead.ExpiresAtMs += protocol.MaxCommandAheadMs
	withParams := newCmd(testVIN, protocol.ActionClimateOn, t0)
	withParams.Params = []byte(`{"temp_c":21.5}`)
	return map[string][]byte{
		"unlock":       gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0)}),
		"locate":       gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionLocate, t0)}),
		"climate":      gw.build(t, cmdSpec{cmd: withParams}),
		"forged":       gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, t0), grantSigner: forger}),
		"other_vin":    gw.build(t, cmdSpec{cmd: newCmd(otherVIN, protocol.ActionUnlock, t0)}),
		"expired":      gw.build(t, cmdSpec{cmd: expired, grantExpMs: t0.Add(time.Minute).UnixMilli()}),
		"too_far":      gw.build(t, cmdSpec{cmd: ahead}),
		"malformed":    []byte(`{"v":1,"command":{"doc":"!!"},"grant":{"doc":"e30","sig":"AA"}}`),
		"empty_object": []byte(`{}`),
	}
}

// TestUpdateFuzzCorpus rewrites the seed corpus (and the key, if missing) when run with
// -update-corpus.
func TestUpdateFuzzCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update-corpus to rewrite testdata/fuzz/FuzzHandleCommand")
	}
	gw := fuzzGateway(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzHandleCommand")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range fuzzSeeds(t, gw) {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, "seed_"+name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzHandleCommand feeds arbitrary bytes to a car: it never panics, answers every message
// with executed or a reason from the closed list, and never executes the same message twice.
func FuzzHandleCommand(f *testing.F) {
	gw := fuzzGateway(f)
	for _, b := range fuzzSeeds(f, gw) {
		f.Add(b)
	}
	st := openTestStore(f, f.TempDir())
	car, err := NewCar(st, gw.creds(f, testVIN), CarOptions{Now: func() time.Time { return t0 }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		res := car.HandleCommand(payload)
		switch res.Status {
		case protocol.ResultExecuted:
			if res.Reason != "" || res.State == nil || !protocol.ValidID(res.ID) {
				t.Fatalf("executed result %+v", res)
			}
			again := car.HandleCommand(payload)
			if again.Status != protocol.ResultRejected || again.Reason != protocol.ReasonDuplicate {
				t.Fatalf("the same command again: %+v", again)
			}
		case protocol.ResultRejected:
			if !res.Reason.Valid() {
				t.Fatalf("reason %q not on the closed list", res.Reason)
			}
			if res.ID != "" && !protocol.ValidID(res.ID) {
				t.Fatalf("result id %q", res.ID)
			}
		default:
			t.Fatalf("status %q", res.Status)
		}
	})
}
