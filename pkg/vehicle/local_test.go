package vehicle

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/carstore"
)

// linkRig is testVIN's car (and otherVIN's) behind a LinkServer on 127.0.0.1:0.
type linkRig struct {
	gw     *testGateway
	clock  *clocktest.Fake
	st     *carstore.Store
	car    *Car
	other  *Car
	link   *LinkServer
	client *http.Client
}

// newLinkRig starts the link on the store in dir; the car gets the cast's whitelist unless
// bare.
func newLinkRig(t *testing.T, gw *testGateway, clock *clocktest.Fake, dir string, bare bool) *linkRig {
	t.Helper()
	st, err := carstore.Open(filepath.Join(dir, carstore.File))
	if err != nil {
		t.Fatal(err)
	}
	r := &linkRig{gw: gw, clock: clock, st: st, client: &http.Client{Timeout: 10 * time.Second}}
	r.car = newTestCar(t, st, gw.creds(t, testVIN), clock)
	if !bare {
		install(t, r.car, gw.whitelist(t, wlSpec{}))
	}
	r.other = newTestCar(t, st, gw.creds(t, otherVIN), clock)
	install(t, r.other, gw.whitelist(t, wlSpec{vin: otherVIN}))
	garage := NewGarage()
	garage.Put(r.car)
	garage.Put(r.other)
	r.link = NewLinkServer(garage, nil)
	if err := r.link.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	return r
}

// stop closes the link and the store (a car that is switched off); idempotent.
func (r *linkRig) stop() {
	r.link.Close()
	r.st.Close()
}

func (r *linkRig) post(t *testing.T, path string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := r.client.Post(r.link.URL()+path, "application/json", bytes.NewReader(body))
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

func (r *linkRig) challenge(t *testing.T, vin string) protocol.Challenge {
	t.Helper()
	code, b := r.post(t, "/v1/link/"+vin+"/challenge", nil)
	var ch protocol.Challenge
	if code != http.StatusOK || json.Unmarshal(b, &ch) != nil {
		t.Fatalf("challenge: %d %s", code, b)
	}
	return ch
}

// command posts a local request for testVIN and returns the car's answer.
func (r *linkRig) command(t *testing.T, body []byte) protocol.Result {
	t.Helper()
	code, b := r.post(t, "/v1/link/"+testVIN+"/command", body)
	var res protocol.Result
	if code != http.StatusOK || json.Unmarshal(b, &res) != nil {
		t.Fatalf("command: %d %s", code, b)
	}
	return res
}

// localCmd is a command for vin at the rig's clock, carrying a fresh challenge of testVIN.
func (r *linkRig) localCmd(t *testing.T, vin string, a protocol.Action) protocol.Command {
	c := newCmd(vin, a, r.clock.Now())
	c.Nonce = r.challenge(t, testVIN).Nonce
	return c
}

func journal(t *testing.T, st *carstore.Store, vin string) []protocol.VehicleEvent {
	t.Helper()
	evs, err := st.Journal(vin, 0, carstore.MaxJournalEntries+10)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// TestLocalRefusals has one case per reason a car refuses a local command, in the order of
// HandleLocal's checks. Every refusal is answered 200 with the reason and journaled.
func TestLocalRefusals(t *testing.T) {
	gw := newTestGateway(t)
	cast := gw.cast
	tests := []struct {
		name   string
		bare   bool // the car never received a whitelist
		body   func(t *testing.T, r *linkRig) []byte
		reason protocol.Reason
	}{
		{name: "car has no whitelist", bare: true, body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock)})
		}, reason: protocol.ReasonKeyUnknown},
		{name: "command document is not a command", body: func(t *testing.T, r *linkRig) []byte {
			return []byte(`{"v":1,"command":{"doc":"` + protocol.EncodeB64([]byte(`{"v":1}`)) + `","sig":"AA","kid":"x"}}`)
		}, reason: protocol.ReasonBadRequest},
		{name: "unknown action", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, "self_destruct")})
		}, reason: protocol.ReasonBadRequest},
		{name: "not signed by a phone", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), unsigned: true})
		}, reason: protocol.ReasonSignatureInvalid},
		{name: "signed by a key other than the kid it names", body: func(t *testing.T, r *linkRig) []byte {
			c := r.localCmd(t, testVIN, protocol.ActionUnlock)
			c.KeyID, c.User = cast.owner.key.ID, cast.owner.key.User
			return gw.local(t, cmdSpec{cmd: c, phone: cast.stranger, phoneKID: cast.owner.key.ID})
		}, reason: protocol.ReasonSignatureInvalid},
		{name: "command document tampered after signing", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), tamperCmd: true})
		}, reason: protocol.ReasonSignatureInvalid},
		{name: "key not on the whitelist", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), phone: cast.stranger})
		}, reason: protocol.ReasonKeyUnknown},
		{name: "key revoked", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), phone: cast.revoked})
		}, reason: protocol.ReasonKeyRevoked},
		{name: "key not yet valid", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), phone: cast.notYet})
		}, reason: protocol.ReasonKeyExpired},
		{name: "key expired", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), phone: cast.expired})
		}, reason: protocol.ReasonKeyExpired},
		{name: "cloud-only key on the local link", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock), phone: cast.cloudOnly})
		}, reason: protocol.ReasonForbidden},
		{name: "valet may not open the trunk", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionOpenTrunk), phone: cast.valet})
		}, reason: protocol.ReasonForbidden},
		{name: "command for another vin", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: r.localCmd(t, otherVIN, protocol.ActionUnlock)})
		}, reason: protocol.ReasonForbidden},
		{name: "no nonce", body: func(t *testing.T, r *linkRig) []byte {
			return gw.local(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionUnlock, r.clock.Now())})
		}, reason: protocol.ReasonBadRequest},
		{name: "nonce never issued", body: func(t *testing.T, r *linkRig) []byte {
			c := newCmd(testVIN, protocol.ActionUnlock, r.clock.Now())
			c.Nonce = "AAAAAAAAAAAAAAAAAAAAAA"
			return gw.local(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "nonce issued by another car", body: func(t *testing.T, r *linkRig) []byte {
			c := newCmd(testVIN, protocol.ActionUnlock, r.clock.Now())
			c.Nonce = r.challenge(t, otherVIN).Nonce
			return gw.local(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "nonce expired", body: func(t *testing.T, r *linkRig) []byte {
			nonce := r.challenge(t, testVIN).Nonce
			r.clock.Advance(protocol.ChallengeLifetimeMs*time.Millisecond + time.Millisecond)
			c := newCmd(testVIN, protocol.ActionUnlock, r.clock.Now())
			c.Nonce = nonce
			return gw.local(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "nonce used before", body: func(t *testing.T, r *linkRig) []byte {
			first := r.localCmd(t, testVIN, protocol.ActionHonk)
			if res := r.command(t, gw.local(t, cmdSpec{cmd: first})); res.Status != protocol.ResultExecuted {
				t.Fatalf("first command: %+v", res)
			}
			c := newCmd(testVIN, protocol.ActionUnlock, r.clock.Now())
			c.Nonce = first.Nonce
			return gw.local(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonDuplicate},
		{name: "command expired", body: func(t *testing.T, r *linkRig) []byte {
			c := newCmd(testVIN, protocol.ActionUnlock, r.clock.Now().Add(-time.Minute))
			c.Nonce = r.challenge(t, testVIN).Nonce
			return gw.local(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonExpired},
		{name: "expiry more than 30 s ahead", body: func(t *testing.T, r *linkRig) []byte {
			c := r.localCmd(t, testVIN, protocol.ActionUnlock)
			c.ExpiresAtMs = r.clock.Now().UnixMilli() + protocol.MaxCommandAheadMs + 1
			return gw.local(t, cmdSpec{cmd: c})
		}, reason: protocol.ReasonBadRequest},
		{name: "command id executed before", body: func(t *testing.T, r *linkRig) []byte {
			first := r.localCmd(t, testVIN, protocol.ActionHonk)
			if res := r.command(t, gw.local(t, cmdSpec{cmd: first})); res.Status != protocol.ResultExecuted {
				t.Fatalf("first command: %+v", res)
			}
			again := first
			again.Action = protocol.ActionUnlock
			again.Nonce = r.challenge(t, testVIN).Nonce
			return gw.local(t, cmdSpec{cmd: again})
		}, reason: protocol.ReasonDuplicate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newLinkRig(t, gw, newClock(t0), t.TempDir(), tc.bare)
			body := tc.body(t, r)
			res := r.command(t, body)
			if res.Status != protocol.ResultRejected || res.Reason != tc.reason {
				t.Fatalf("got %s/%q, want rejected/%q", res.Status, res.Reason, tc.reason)
			}
			if res.State != nil {
				t.Errorf("a refusal carries state %v", res.State)
			}
			if !r.car.State().Locked {
				t.Error("a refused command unlocked the car")
			}
			evs := journal(t, r.st, testVIN)
			if len(evs) == 0 {
				t.Fatal("refusal not journaled")
			}
			last := evs[len(evs)-1]
			if last.Status != protocol.ResultRejected || last.Reason != tc.reason || last.Kind != protocol.EventLocalCommand ||
				last.VIN != testVIN || last.TsMs != r.clock.Now().UnixMilli() || last.Seq != uint64(len(evs)) {
				t.Errorf("journal entry %+v", last)
			}
			var req protocol.LocalRequest
			json.Unmarshal(body, &req)
			raw, _ := json.Marshal(last)
			if req.Command.Sig != "" && strings.Contains(string(raw), req.Command.Sig) {
				t.Errorf("journal entry carries the signature: %s", raw)
			}
			if doc, err := req.Command.DocBytes(); err == nil {
				var c protocol.Command
				if json.Unmarshal(doc, &c) == nil && c.Nonce != "" && strings.Contains(string(raw), c.Nonce) {
					t.Errorf("journal entry carries the nonce: %s", raw)
				}
			}
		})
	}
}

func TestLocalUnlockExecutesAndJournals(t *testing.T) {
	gw := newTestGateway(t)
	r := newLinkRig(t, gw, newClock(t0), t.TempDir(), false)

	ch := r.challenge(t, testVIN)
	if nonce, err := protocol.DecodeB64(ch.Nonce); err != nil || len(nonce) != 16 || ch.VIN != testVIN || ch.V != protocol.Version ||
		ch.ExpiresAtMs != t0.UnixMilli()+protocol.ChallengeLifetimeMs {
		t.Fatalf("challenge %+v", ch)
	}
	cmd := newCmd(testVIN, protocol.ActionUnlock, t0)
	cmd.Nonce = ch.Nonce
	res := r.command(t, gw.local(t, cmdSpec{cmd: cmd}))
	if res.Status != protocol.ResultExecuted || res.ID != cmd.ID || res.State[protocol.VSSIsLocked] != false {
		t.Fatalf("result %+v", res)
	}
	if _, ok := res.State[protocol.VSSLatitude]; ok {
		t.Error("an unlock result reveals the position")
	}
	if r.car.State().Locked {
		t.Fatal("the car is still locked")
	}
	evs := journal(t, r.st, testVIN)
	want := protocol.VehicleEvent{V: protocol.Version, VIN: testVIN, Seq: 1, Kind: protocol.EventLocalCommand, CmdID: cmd.ID,
		KeyID: gw.cast.owner.key.ID, User: "alice", Action: protocol.ActionUnlock, Status: protocol.ResultExecuted, TsMs: t0.UnixMilli()}
	if len(evs) != 1 || evs[0] != want {
		t.Fatalf("journal %+v\nwant %+v", evs, want)
	}

	// The replay cache is the cloud path's too: the same id through the gateway is a replay.
	same := gw.build(t, cmdSpec{cmd: cmd})
	if res := r.car.HandleCommand(same); res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("the local command's id on the cloud path: %+v", res)
	}
	// And a cloud command is not journaled.
	if res := r.car.HandleCommand(gw.build(t, cmdSpec{cmd: newCmd(testVIN, protocol.ActionLock, t0)})); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	if n := len(journal(t, r.st, testVIN)); n != 1 {
		t.Errorf("journal holds %d entries after a cloud command", n)
	}
}

// TestLocalReplayAfterRestart: a car that restarts (store reopened, new process) knows none of
// its old nonces, but still every id it executed.
func TestLocalReplayAfterRestart(t *testing.T) {
	gw := newTestGateway(t)
	dir := t.TempDir()
	clock := newClock(t0)
	r := newLinkRig(t, gw, clock, dir, false)
	cmd := r.localCmd(t, testVIN, protocol.ActionUnlock)
	body := gw.local(t, cmdSpec{cmd: cmd})
	if res := r.command(t, body); res.Status != protocol.ResultExecuted {
		t.Fatal(res)
	}
	if res := r.command(t, body); res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("the same request again: %+v", res)
	}
	r.stop()

	clock.Advance(time.Second)
	r = newLinkRig(t, gw, clock, dir, true) // whatever the car knows now comes from its store
	if res := r.command(t, body); res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonExpired {
		t.Fatalf("the same request after restart: %+v (its nonce is from before)", res)
	}
	again := cmd
	again.Nonce = r.challenge(t, testVIN).Nonce
	if res := r.command(t, gw.local(t, cmdSpec{cmd: again})); res.Status != protocol.ResultRejected || res.Reason != protocol.ReasonDuplicate {
		t.Fatalf("the same id with a fresh nonce after restart: %+v", res)
	}
	if res := r.command(t, gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionLock)})); res.Status != protocol.ResultExecuted {
		t.Fatalf("a new command after restart: %+v", res)
	}
	// The journal survived: every decision, in order.
	evs := journal(t, r.st, testVIN)
	var got []string
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Errorf("entry %d has seq %d", i, ev.Seq)
		}
		got = append(got, fmt.Sprintf("%s/%s/%s", ev.Action, ev.Status, ev.Reason))
	}
	want := []string{"unlock/executed/", "unlock/rejected/duplicate", "unlock/rejected/expired", "unlock/rejected/duplicate", "lock/executed/"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("journal %v, want %v", got, want)
	}
}

func TestLinkHTTPErrors(t *testing.T) {
	gw := newTestGateway(t)
	r := newLinkRig(t, gw, newClock(t0), t.TempDir(), false)
	valid := func() []byte { return gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionUnlock)}) }
	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
		code   int
		reason protocol.Reason
	}{
		{"car not run here", http.MethodPost, "/v1/link/WVWZZZ1JZXW000999/command", valid(), http.StatusNotFound, protocol.ReasonVehicleUnknown},
		{"challenge of a car not run here", http.MethodPost, "/v1/link/WVWZZZ1JZXW000999/challenge", nil, http.StatusNotFound, protocol.ReasonVehicleUnknown},
		{"malformed vin", http.MethodPost, "/v1/link/not-a-vin/challenge", nil, http.StatusBadRequest, protocol.ReasonBadRequest},
		{"not json", http.MethodPost, "/v1/link/" + testVIN + "/command", []byte("open sesame"), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"empty body", http.MethodPost, "/v1/link/" + testVIN + "/command", nil, http.StatusBadRequest, protocol.ReasonBadRequest},
		{"no command", http.MethodPost, "/v1/link/" + testVIN + "/command", []byte(`{"v":1}`), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"wrong version", http.MethodPost, "/v1/link/" + testVIN + "/command", []byte(`{"v":2,"command":{"doc":"e30"}}`), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"oversized", http.MethodPost, "/v1/link/" + testVIN + "/command",
			append([]byte(`{"v":1,"pad":"`), bytes.Repeat([]byte("a"), protocol.MaxPayloadBytes)...), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"get", http.MethodGet, "/v1/link/" + testVIN + "/challenge", nil, http.StatusMethodNotAllowed, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, r.link.URL()+tc.path, bytes.NewReader(tc.body))
			resp, err := r.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error   protocol.Reason `json:"error"`
				Message string          `json:"message"`
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, b, tc.code)
			}
			if tc.reason != "" {
				if err := json.Unmarshal(b, &e); err != nil || e.Error != tc.reason || e.Message == "" {
					t.Fatalf("body %s, want error %q with a message", b, tc.reason)
				}
			}
		})
	}
	if n := len(journal(t, r.st, testVIN)); n != 0 {
		t.Errorf("requests that reached no car were journaled (%d entries)", n)
	}
	if !r.car.State().Locked {
		t.Error("the car was unlocked")
	}
}

// TestLocalConcurrent: phones racing for one car are served one at a time, each exactly once.
func TestLocalConcurrent(t *testing.T) {
	gw := newTestGateway(t)
	r := newLinkRig(t, gw, newClock(t0), t.TempDir(), false)
	const n = 8
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = gw.local(t, cmdSpec{cmd: r.localCmd(t, testVIN, protocol.ActionFlash)})
	}
	var wg sync.WaitGroup
	results := make([]protocol.Result, 2*n)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = r.command(t, bodies[i%n])
		}()
	}
	wg.Wait()
	executed := 0
	for _, res := range results {
		if res.Status == protocol.ResultExecuted {
			executed++
		} else if res.Reason != protocol.ReasonDuplicate {
			t.Errorf("result %+v", res)
		}
	}
	if executed != n {
		t.Errorf("%d executed, want %d", executed, n)
	}
	evs := journal(t, r.st, testVIN)
	if len(evs) != 2*n {
		t.Fatalf("journal holds %d entries, want %d", len(evs), 2*n)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("entry %d has seq %d", i, ev.Seq)
		}
	}
}

func TestCheckLinkAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1884": true, "127.0.0.1:0": true, "[::1]:1884": true, "localhost:1884": true, "127.1.2.3:9": true,
		":1884": false, "0.0.0.0:1884": false, "192.168.1.10:1884": false, "example.com:1884": false, "127.0.0.1": false, "": false,
	} {
		if err := CheckLinkAddr(addr); (err == nil) != ok {
			t.Errorf("%q: %v", addr, err)
		}
	}
	l := NewLinkServer(NewGarage(), nil)
	if err := l.Start("0.0.0.0:0"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Start on every interface: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}
