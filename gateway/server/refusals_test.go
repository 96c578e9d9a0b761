package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/server"
	"telematics/gateway/store"
	"telematics/internal/testutil"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// appRequest builds alice's request for cmd: signed by key when key is set, with envelope
// fields overridden by mutate.
func appRequest(t *testing.T, cmd protocol.Command, key *sign.Signer, mutate func(*protocol.Envelope)) []byte {
	t.Helper()
	doc, err := json.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	env := protocol.Envelope{Doc: protocol.EncodeB64(doc)}
	if key != nil {
		if env, err = key.Sign(doc); err != nil {
			t.Fatal(err)
		}
	}
	if mutate != nil {
		mutate(&env)
	}
	p, err := json.Marshal(protocol.AppRequest{V: 1, Command: env})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Case 6 of issue 8: requests refused for what they are (far-future expiry, signed or not; a
// signature that cannot be one) leave no id behind, neither in memory nor in the store, so a
// flood of them grows nothing and nothing of them survives a restart.
func TestRefusedRequestsAreNotRemembered(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, func(c *server.Config) { c.Commands.RateBurst = 1000 })
	vin := provision(t, g, 1)[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	alice, _, key := loginKey(t, g, "alice", "", vin)

	type tc struct {
		name   string
		cmd    protocol.Command
		key    *sign.Signer
		mutate func(*protocol.Envelope)
		want   protocol.Reason
	}
	var cases []tc
	for i := 0; i < 20; i++ {
		farAhead := alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock})
		farAhead.ExpiresAtMs = time.Now().Add(time.Hour).UnixMilli()
		cases = append(cases, tc{"unsigned, an hour ahead", farAhead, nil, nil, protocol.ReasonBadRequest})
	}
	signedFar := alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock})
	signedFar.ExpiresAtMs = time.Now().Add(24 * time.Hour).UnixMilli()
	cases = append(cases,
		tc{"signed, a day ahead", signedFar, key, nil, protocol.ReasonBadRequest},
		tc{"unsigned", alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock}), nil, nil, protocol.ReasonSignatureInvalid},
		tc{"signature too short", alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock}), key,
			func(e *protocol.Envelope) { e.Sig = "AAAA" }, protocol.ReasonSignatureInvalid},
		tc{"kid no id", alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock}), key,
			func(e *protocol.Envelope) { e.KID = "../" + e.KID }, protocol.ReasonSignatureInvalid},
	)
	var ids []string
	for _, c := range cases {
		r, err := alice.SendRaw(context.Background(), c.cmd.ID, time.Now().Add(10*time.Second), appRequest(t, c.cmd, c.key, c.mutate), nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.Status != protocol.ReplyRejected || r.Reason != c.want {
			t.Errorf("%s: %s/%s, want rejected/%s", c.name, r.Status, r.Reason, c.want)
		}
		ids = append(ids, c.cmd.ID)
	}
	for i, id := range ids {
		if g.Router().Remembers(id) {
			t.Errorf("%s: id %s remembered in memory", cases[i].name, id)
		}
	}
	g.Close()
	st, err := store.Open(filepath.Join(dir, server.DBFile))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	seen, err := st.SeenCommandIDs(time.Now().UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		if _, ok := seen[id]; ok {
			t.Errorf("%s: id %s persisted, would survive a restart", cases[i].name, id)
		}
	}
}

// Case 6 of issue 8: refused requests use up a per-user budget (the command rate limit): past
// it, requests are answered rate_limited without being looked at further, the audit log
// counts them in summary records, and no refusal goes unaccounted.
func TestRefusedRequestsAreRateLimited(t *testing.T) {
	t.Parallel()
	const burst, sent = 5, 15
	g := startGateway(t, t.TempDir(), func(c *server.Config) {
		// One token a minute: the test ends long before a second one.
		c.Commands.RatePerMinute, c.Commands.RateBurst = 1, burst
	})
	vin := provision(t, g, 1)[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	addUser(t, g, "bob", "", "")
	alice, _, key := loginKey(t, g, "alice", "", vin)
	bob := login(t, g, "bob", "")

	answered := map[protocol.Reason]int{}
	for i := 0; i < sent; i++ {
		cmd := alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock})
		r, err := alice.SendRaw(context.Background(), cmd.ID, time.Now().Add(10*time.Second), appRequest(t, cmd, nil, nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		answered[r.Reason]++
	}
	if answered[protocol.ReasonSignatureInvalid] > burst+1 || answered[protocol.ReasonRateLimited] < sent-burst-1 ||
		answered[protocol.ReasonSignatureInvalid]+answered[protocol.ReasonRateLimited] != sent {
		t.Fatalf("%d unsigned requests answered %v; want at most %d signature_invalid, the rest rate_limited", sent, answered, burst+1)
	}
	// A well-formed, signed request of the same user is throttled too.
	cmd := alice.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionLock})
	r, err := alice.SendRaw(context.Background(), cmd.ID, time.Now().Add(10*time.Second), appRequest(t, cmd, key, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyRejected, protocol.ReasonRateLimited)
	// Another user is not.
	expect(t, send(t, bob, vin, protocol.ActionLock), protocol.ReplyRejected, protocol.ReasonKeyUnknown)

	// Every refusal is in the audit log: one record each, or counted in a summary.
	testutil.Eventually(t, 5*time.Second, func() error {
		evs, err := g.Audit().Query(audit.Filter{User: "alice", Kind: audit.KindCommand, Limit: 1000})
		if err != nil {
			return err
		}
		records, total := 0, 0
		for _, ev := range evs {
			records++
			var n int
			if _, err := fmt.Sscanf(ev.Detail, "requests=%d", &n); err == nil && ev.Reason == string(protocol.ReasonRateLimited) {
				total += n
			} else {
				total++
			}
		}
		if total != sent+1 {
			return fmt.Errorf("audit accounts for %d of %d refused requests in %d records", total, sent+1, records)
		}
		if !strings.Contains(fmt.Sprint(evs), "requests=") {
			return fmt.Errorf("no summary record among %d", records)
		}
		return nil
	})
}
