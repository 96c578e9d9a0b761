package phone

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
	"telematics/pkg/whitelist"
)

func TestSignCommandVerifiesAgainstWhitelist(t *testing.T) {
	key, other := newKey(t), newKey(t)
	wl := &protocol.Whitelist{V: protocol.Version, VIN: testVIN, Version: 1,
		Keys: []protocol.WhitelistKey{phonetest.KeyFor(key, testUser, protocol.RoleOwner)}}
	now := time.Now()
	cmd := newCommand(testUser, "", Request{VIN: testVIN, Action: protocol.ActionUnlock}, now)

	signed, env, err := SignCommand(key, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if signed.KeyID != key.KID() || env.KID != key.KID() {
		t.Fatalf("key ids: command %q, envelope %q, want %q", signed.KeyID, env.KID, key.KID())
	}
	for _, ch := range []string{protocol.ChannelCloud, protocol.ChannelLocal} {
		got, k, err := whitelist.VerifyCommand(wl, env, ch, now)
		if err != nil {
			t.Fatalf("%s: %v", ch, err)
		}
		if got.ID != cmd.ID || got.User != testUser || got.KeyID != key.KID() || k.ID != key.KID() {
			t.Fatalf("%s: verified %+v with key %s", ch, got, k.ID)
		}
	}

	tests := []struct {
		name   string
		env    func() (json.RawMessage, error)
		reason protocol.Reason
	}{
		{"signed by a key not on the whitelist", func() (json.RawMessage, error) {
			_, e, err := SignCommand(other, cmd)
			return mustRaw(e), err
		}, protocol.ReasonKeyUnknown},
		{"document changed after signing", func() (json.RawMessage, error) {
			e := env
			changed := signed
			changed.Action = protocol.ActionOpenTrunk
			doc, _ := json.Marshal(changed)
			e.Doc = protocol.EncodeB64(doc)
			return mustRaw(e), nil
		}, protocol.ReasonSignatureInvalid},
		{"signature of another document", func() (json.RawMessage, error) {
			_, e2, err := SignCommand(key, newCommand(testUser, "", Request{VIN: testVIN, Action: protocol.ActionLock}, now))
			e := env
			e.Sig = e2.Sig
			return mustRaw(e), err
		}, protocol.ReasonSignatureInvalid},
		{"another user's name", func() (json.RawMessage, error) {
			_, e, err := SignCommand(key, newCommand("bob", "", Request{VIN: testVIN, Action: protocol.ActionLock}, now))
			return mustRaw(e), err
		}, protocol.ReasonForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := tc.env()
			if err != nil {
				t.Fatal(err)
			}
			var e protocol.Envelope
			_ = json.Unmarshal(raw, &e)
			if _, _, err := whitelist.VerifyCommand(wl, e, protocol.ChannelCloud, now); protocol.ReasonOf(err) != tc.reason {
				t.Fatalf("got %v, want %s", err, tc.reason)
			}
		})
	}
	if _, _, err := SignCommand(nil, cmd); !errors.Is(err, ErrNoKey) {
		t.Fatalf("nil key: %v", err)
	}
}

func mustRaw(v any) json.RawMessage { b, _ := json.Marshal(v); return b }

// TestSendSignsEveryCommand sends through a real broker and checks what arrives on the
// request topic: signed by the phone key, naming key and user, and no private key in it.
func TestSendSignsEveryCommand(t *testing.T) {
	b := startBroker(t, true)
	b.answer(t, func(c protocol.Command) []step {
		return []step{{0, protocol.Reply{V: 1, ID: c.ID, Status: protocol.ReplyAccepted}},
			{0, protocol.Reply{V: 1, ID: c.ID, Status: protocol.ReplyExecuted, VIN: c.VIN, Action: c.Action}}}
	})
	key := newKey(t)
	app, err := Connect(context.Background(), testSession(b.url()), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()

	// Without a key nothing is sent.
	if _, err := app.Send(context.Background(), Request{VIN: testVIN, Action: protocol.ActionLock}, nil); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Send without key: %v, want ErrNoKey", err)
	}
	app.SetKey(key)
	var seen []string
	final, err := app.Send(context.Background(), Request{VIN: testVIN, Action: protocol.ActionUnlock, TOTP: "123456"},
		func(r protocol.Reply) { seen = append(seen, r.Status) })
	if err != nil {
		t.Fatal(err)
	}
	if final.Status != protocol.ReplyExecuted || fmt.Sprint(seen) != "[accepted executed]" {
		t.Fatalf("final %+v, replies %v", final, seen)
	}
	// The fake gateway's recorder and answerer are two inline subscriptions that mochi calls in
	// map order: the answer can reach the phone a moment before the request is recorded.
	testutil.Eventually(t, 5*time.Second, func() error {
		if len(b.Requests()) == 0 {
			return errors.New("the request is not recorded yet")
		}
		return nil
	})
	reqs := b.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests on the broker, want 1 (none for the keyless Send)", len(reqs))
	}
	var ar protocol.AppRequest
	if err := json.Unmarshal(reqs[0], &ar); err != nil {
		t.Fatal(err)
	}
	if ar.TOTP != "123456" || ar.V != protocol.Version {
		t.Fatalf("app request %+v", ar)
	}
	wl := &protocol.Whitelist{V: 1, VIN: testVIN, Version: 1, Keys: []protocol.WhitelistKey{phonetest.KeyFor(key, testUser, protocol.RoleOwner)}}
	cmd, _, err := whitelist.VerifyCommand(wl, ar.Command, protocol.ChannelCloud, time.Now())
	if err != nil {
		t.Fatalf("the published command does not verify: %v", err)
	}
	if cmd.KeyID != key.KID() || cmd.User != testUser || cmd.ID != final.ID || cmd.Nonce != "" {
		t.Fatalf("published command %+v", cmd)
	}
	assertNoSecret(t, key, reqs...)
}

// TestSendWaitsForExpiryOnItsClock: the app dates a command and waits for its expiry on the
// clock it was given, so a command the gateway took but never finished gives up when that
// clock passes the expiry plus the margin.
func TestSendWaitsForExpiryOnItsClock(t *testing.T) {
	b := startBroker(t, true)
	b.answer(t, func(c protocol.Command) []step {
		return []step{{0, protocol.Reply{V: 1, ID: c.ID, Status: protocol.ReplyAccepted}}}
	})
	start := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	clk := clocktest.New(start)
	app, err := ConnectWith(context.Background(), testSession(b.url()), ConnectOptions{Key: newKey(t), Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()

	accepted := make(chan struct{})
	type result struct {
		r   protocol.Reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, err := app.Send(context.Background(), Request{VIN: testVIN, Action: protocol.ActionLock, Lifetime: 10 * time.Second},
			func(r protocol.Reply) {
				if r.Status == protocol.ReplyAccepted {
					close(accepted)
				}
			})
		done <- result{r, err}
	}()
	select {
	case <-accepted:
	case res := <-done:
		t.Fatalf("Send returned before the clock moved: %+v, %v", res.r, res.err)
	case <-time.After(10 * time.Second):
		t.Fatal("no accepted reply")
	}
	// The recorder may see the request a moment after the answer reached the phone.
	testutil.Eventually(t, 5*time.Second, func() error {
		if len(b.Requests()) == 0 {
			return errors.New("the request is not recorded yet")
		}
		return nil
	})
	var ar protocol.AppRequest
	_ = json.Unmarshal(b.Requests()[0], &ar)
	doc, _ := ar.Command.DocBytes()
	var cmd protocol.Command
	_ = json.Unmarshal(doc, &cmd)
	if cmd.IssuedAtMs != start.UnixMilli() || cmd.ExpiresAtMs != start.Add(10*time.Second).UnixMilli() {
		t.Fatalf("command dated %d..%d, want the clock's %d..%d", cmd.IssuedAtMs, cmd.ExpiresAtMs,
			start.UnixMilli(), start.Add(10*time.Second).UnixMilli())
	}
	if clk.Waiters() != 1 {
		t.Fatalf("%d waiters on the clock, want the expiry timer", clk.Waiters())
	}
	clk.Advance(15 * time.Second)
	select {
	case res := <-done:
		if !errors.Is(res.err, ErrNoTerminalReply) {
			t.Fatalf("Send = %+v, %v; want ErrNoTerminalReply", res.r, res.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not give up when the clock passed the expiry")
	}
}
