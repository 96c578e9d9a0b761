package phone

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/phone/phonetest"
	"telematics/pkg/protocol"
)

// cloudTimeout is short so the fallback tests stay quick; nothing asserts on timing.
const cloudTimeout = 300 * time.Millisecond

// recorder collects the outcomes SendAuto reports.
type recorder struct {
	mu  sync.Mutex
	got []Outcome
}

func (r *recorder) add(o Outcome) { r.mu.Lock(); r.got = append(r.got, o); r.mu.Unlock() }

func (r *recorder) summary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, o := range r.got {
		s = append(s, fmt.Sprintf("%s:%s", o.Path, o.Reply.Status))
	}
	return strings.Join(s, " ")
}

func autoSetup(t *testing.T) (*phonetest.Link, AutoOptions) {
	t.Helper()
	key := newKey(t)
	link := phonetest.NewLink(t)
	link.AddCar(testVIN, phonetest.KeyFor(key, testUser, protocol.RoleOwner))
	return link, AutoOptions{Key: key, LinkAddr: link.Addr(), GatewayKeys: trust(link), CloudTimeout: cloudTimeout}
}

func TestSendAutoFallsBackWhenTheCloudCannotBeUsed(t *testing.T) {
	expired := testSession("tcp://" + closedAddr(t))
	expired.ExpiresAtMs = time.Now().Add(-time.Minute).UnixMilli()
	refusing := startBroker(t, false) // admits no one: the session is refused
	tests := []struct {
		name    string
		session *Session
		user    string
		reason  string
	}{
		{"no broker listening", testSession("tcp://" + closedAddr(t)), "", "broker unreachable within 300ms"},
		{"no session", nil, testUser, "no login session"},
		{"expired session", expired, "", "the login session has expired"},
		{"broker refuses the session", testSession(refusing.url()), "", "the broker refused the login session"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			link, o := autoSetup(t)
			o.Session, o.User = tc.session, tc.user
			var rec recorder
			out, err := SendAuto(context.Background(), o, Request{VIN: testVIN, Action: protocol.ActionUnlock}, rec.add)
			if err != nil {
				t.Fatal(err)
			}
			if out.Path != PathLocal || out.Fallback != tc.reason || out.Reply.Status != protocol.ReplyExecuted {
				t.Fatalf("outcome %+v, want local after %q", out, tc.reason)
			}
			if rec.summary() != "local:executed" || rec.got[0].Fallback != tc.reason {
				t.Fatalf("reported %s %+v", rec.summary(), rec.got)
			}
			if out.Reply.VIN != testVIN || out.Reply.Action != protocol.ActionUnlock || out.Reply.ID == "" {
				t.Fatalf("reply %+v", out.Reply)
			}
			if len(link.Commands()) != 1 {
				t.Fatalf("the car saw %d commands", len(link.Commands()))
			}
		})
	}
}

// TestSendAutoFallsBackWhenTheCloudIsSilent: a real broker takes the request, nobody answers;
// after the cloud timeout the command goes over the local link, with the same command id, so
// the car executes it at most once even if the cloud's copy turns up after all.
func TestSendAutoFallsBackWhenTheCloudIsSilent(t *testing.T) {
	b := startBroker(t, true)
	link, o := autoSetup(t)
	o.Session = testSession(b.url())
	var rec recorder
	out, err := SendAuto(context.Background(), o, Request{VIN: testVIN, Action: protocol.ActionUnlock, TOTP: "123456"}, rec.add)
	if err != nil {
		t.Fatal(err)
	}
	if out.Path != PathLocal || out.Fallback != "cloud did not answer within 300ms" || out.Reply.Status != protocol.ReplyExecuted {
		t.Fatalf("outcome %+v", out)
	}
	reqs := b.Requests()
	if len(reqs) != 1 {
		t.Fatalf("the broker got %d requests, want 1", len(reqs))
	}
	var ar protocol.AppRequest
	_ = json.Unmarshal(reqs[0], &ar)
	doc, _ := ar.Command.DocBytes()
	var cloudCmd protocol.Command
	_ = json.Unmarshal(doc, &cloudCmd)
	local := link.Commands()
	if len(local) != 1 || local[0].ID != cloudCmd.ID || out.Reply.ID != cloudCmd.ID {
		t.Fatalf("cloud command %q, local %+v: want one id for both", cloudCmd.ID, local)
	}
	assertNoSecret(t, o.Key, append(reqs, link.Bodies()...)...)

	// Had the cloud's copy reached the car first, the local one is a duplicate, not a second run.
	link.MarkExecuted("same-id")
	out, err = SendAuto(context.Background(), o, Request{ID: "same-id", VIN: testVIN, Action: protocol.ActionUnlock}, nil)
	if err != nil || out.Reply.Status != protocol.ReplyRejected || out.Reply.Reason != protocol.ReasonDuplicate {
		t.Fatalf("outcome %+v, %v", out, err)
	}
}

// TestSendAutoCloudAnswerIsFinal: once the cloud answered, there is no fallback, whether the
// answer is a rejection, an expiry, or a result that comes after the cloud timeout.
func TestSendAutoCloudAnswerIsFinal(t *testing.T) {
	reply := func(c protocol.Command, status string, reason protocol.Reason) protocol.Reply {
		return protocol.Reply{V: 1, ID: c.ID, Status: status, Reason: reason, VIN: c.VIN, Action: c.Action}
	}
	tests := []struct {
		name   string
		steps  func(protocol.Command) []step
		status string
		seen   string
	}{
		{"rejected", func(c protocol.Command) []step {
			return []step{{0, reply(c, protocol.ReplyRejected, protocol.ReasonKeyRevoked)}}
		}, protocol.ReplyRejected, "cloud:rejected"},
		{"car offline", func(c protocol.Command) []step {
			return []step{{0, reply(c, protocol.ReplyRejected, protocol.ReasonVehicleOffline)}}
		}, protocol.ReplyRejected, "cloud:rejected"},
		{"accepted, then expired", func(c protocol.Command) []step {
			return []step{{0, reply(c, protocol.ReplyAccepted, "")}, {0, reply(c, protocol.ReplyExpired, protocol.ReasonExpired)}}
		}, protocol.ReplyExpired, "cloud:accepted cloud:expired"},
		{"accepted, executed after the cloud timeout", func(c protocol.Command) []step {
			return []step{{0, reply(c, protocol.ReplyAccepted, "")}, {2 * cloudTimeout, reply(c, protocol.ReplyExecuted, "")}}
		}, protocol.ReplyExecuted, "cloud:accepted cloud:executed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := startBroker(t, true)
			b.answer(t, tc.steps)
			link, o := autoSetup(t)
			o.Session = testSession(b.url())
			var rec recorder
			out, err := SendAuto(context.Background(), o, Request{VIN: testVIN, Action: protocol.ActionUnlock}, rec.add)
			if err != nil {
				t.Fatal(err)
			}
			if out.Path != PathCloud || out.Fallback != "" || out.Reply.Status != tc.status {
				t.Fatalf("outcome %+v, want cloud %s", out, tc.status)
			}
			if rec.summary() != tc.seen {
				t.Fatalf("reported %q, want %q", rec.summary(), tc.seen)
			}
			if n := link.Requests(); n != 0 {
				t.Fatalf("the local link was used (%d requests) after the cloud answered", n)
			}
		})
	}
}

func TestSendAutoCloudOnly(t *testing.T) {
	link, o := autoSetup(t)
	o.Session, o.CloudOnly = testSession("tcp://"+closedAddr(t)), true
	out, err := SendAuto(context.Background(), o, Request{VIN: testVIN, Action: protocol.ActionUnlock}, nil)
	if err == nil || !strings.Contains(err.Error(), "broker unreachable") || out.Path != PathCloud {
		t.Fatalf("outcome %+v, %v", out, err)
	}
	if link.Requests() != 0 {
		t.Fatal("--cloud-only used the local link")
	}
	o.Session = nil
	if _, err := SendAuto(context.Background(), o, Request{VIN: testVIN, Action: protocol.ActionUnlock}, nil); err == nil || !strings.Contains(err.Error(), "log in") {
		t.Fatalf("no session, cloud only: %v", err)
	}
}

func TestSendAutoBothPathsFail(t *testing.T) {
	_, o := autoSetup(t)
	o.Session = testSession("tcp://" + closedAddr(t))
	o.LinkAddr = closedAddr(t)
	out, err := SendAuto(context.Background(), o, Request{VIN: testVIN, Action: protocol.ActionUnlock}, nil)
	if err == nil || out.Path != PathLocal || !strings.Contains(err.Error(), "cloud: broker unreachable") || !strings.Contains(err.Error(), "car unreachable") {
		t.Fatalf("outcome %+v, %v", out, err)
	}
}

func TestSendAutoStopsWithContext(t *testing.T) {
	b := startBroker(t, true) // takes the request, never answers
	link, o := autoSetup(t)
	o.Session, o.CloudTimeout = testSession(b.url()), time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := SendAuto(ctx, o, Request{VIN: testVIN, Action: protocol.ActionUnlock}, nil)
		done <- err
	}()
	testutil.Eventually(t, 5*time.Second, func() error {
		if len(b.Requests()) == 0 {
			return fmt.Errorf("no request yet")
		}
		return nil
	})
	cancel()
	select {
	case err := <-done:
		if err != context.Canceled {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SendAuto did not stop with its context")
	}
	if link.Requests() != 0 {
		t.Fatal("a cancelled send fell back to the local link")
	}
}
