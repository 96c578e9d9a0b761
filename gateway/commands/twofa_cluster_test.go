package commands

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"telematics/gateway/kv"
	"telematics/gateway/twofa"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
)

// replicaFactor is the gateway's second factor as a replica's router takes it (as
// server.activeUsers gives it, without the account checks): twofa's decision, in the decision's
// transaction when the request carries no code.
type replicaFactor struct{ svc *twofa.Service }

func (f replicaFactor) Authorize(user, session string, action protocol.Action, code string) ([]string, error) {
	d, err := f.svc.Decide(user, session, string(action), code)
	return d.Factors, err
}

func (f replicaFactor) AuthorizeTx(tx kv.Tx, user, session string, action protocol.Action, codeFactors []string) ([]string, error) {
	if codeFactors != nil {
		return codeFactors, f.svc.LockoutTx(tx, user)
	}
	d, err := f.svc.DecideTx(tx, user, session, string(action))
	return d.Factors, err
}

var _ TxSecondFactor = replicaFactor{}

// A replica with the real 2FA service on etcd: a request carrying alice's TOTP code is
// accepted with the code's factor (verified before the decision's transaction) and elevates
// the phone key's session; the next request, without a code, is accepted by that step-up, read
// in the transaction; the same code again is refused as replayed. A lockout committed by
// another replica while a decision runs makes it run again and refuse locked_out.
func TestClusterSecondFactorInTheDecision(t *testing.T) {
	c := newClusterRig(t)
	st := c.store()
	svc, err := twofa.New(st.KV(), []byte("0123456789abcdef0123456789abcdef"), twofa.DefaultPolicy(), c.clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := c.replicaWith("a", replicaFactor{svc})
	c.online(a)
	c.mu.Lock()
	c.answer = true
	c.mu.Unlock()

	e, err := svc.Enroll("alice", "alice-web", "")
	if err != nil {
		t.Fatal(err)
	}
	codeAt := func(at time.Time) string {
		code, err := totp.GenerateCodeCustom(e.Secret, at, totp.ValidateOpts{Period: twofa.PeriodSeconds, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	if _, err := svc.Confirm("alice", "alice-web", codeAt(c.clk.Now())); err != nil {
		t.Fatal(err)
	}
	send := func(code string) string {
		cmd := vehicletest.NewCommand(c.vin, protocol.ActionUnlock, c.clk.Now())
		b, _ := json.Marshal(protocol.AppRequest{V: protocol.Version, Command: c.owner.Sign(c.t, cmd), TOTP: code})
		<-a.r.Submit("alice", "", b)
		return cmd.ID
	}

	// Without a code and without a step-up: totp_required.
	id := send("")
	c.waitTerminal(protocol.ReplyRejected, id)
	if got := c.terminal(id)[0].Reason; got != protocol.ReasonTOTPRequired {
		t.Fatalf("unlock without a code: %s, want %s", got, protocol.ReasonTOTPRequired)
	}
	// With the next step's code: accepted and executed; the phone key's session is elevated.
	c.clk.Advance(twofa.PeriodSeconds * time.Second)
	code := codeAt(c.clk.Now())
	id = send(code)
	c.waitTerminal(protocol.ReplyExecuted, id)
	// Without a code now: the step-up, read in the decision's transaction.
	id = send("")
	c.waitTerminal(protocol.ReplyExecuted, id)
	// The same code again: replayed.
	id = send(code)
	c.waitTerminal(protocol.ReplyRejected, id)
	if got := c.terminal(id)[0].Reason; got != protocol.ReasonTOTPReplayed {
		t.Fatalf("the code again: %s, want %s", got, protocol.ReasonTOTPReplayed)
	}

	// Another replica's service locks alice out while a's decision runs: it runs again and
	// refuses locked_out, even in the elevated session.
	other, err := twofa.New(c.store().KV(), []byte("0123456789abcdef0123456789abcdef"), twofa.DefaultPolicy(), c.clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	var runs int
	hook := func(string) {
		runs++
		if runs == 1 {
			for range twofa.DefaultPolicy().MaxFailures {
				_, _ = other.Decide("alice", "elsewhere", string(protocol.ActionUnlock), "000000")
			}
		}
	}
	a.r.duringDecision.Store(&hook)
	id = send("")
	c.waitTerminal(protocol.ReplyRejected, id)
	if got := c.terminal(id)[0].Reason; got != protocol.ReasonLockedOut {
		t.Fatalf("unlock by a user locked out during the decision: %s, want %s", got, protocol.ReasonLockedOut)
	}
	if runs != 1 {
		t.Fatalf("the decision passed its checks %d times, want 1 (the run again refuses)", runs)
	}
}

// replicaWith is replica with a second factor.
func (c *clusterRig) replicaWith(name string, f SecondFactor) *replica {
	return c.startReplica(name, f)
}
