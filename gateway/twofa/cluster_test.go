package twofa

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/internal/etcdtest"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
)

// replicas are two 2FA services, as two gateway replicas run them, each with its own etcd
// client, on one real (embedded) etcd and one clock.
type replicas struct {
	a, b  *Service
	clock *clocktest.Fake
	audit *recorder
}

func openEtcd(t *testing.T, cluster *etcdtest.Cluster) kv.Store {
	t.Helper()
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Prefix: "/twofa-test/", Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newReplicas(t *testing.T) *replicas {
	t.Helper()
	cluster := etcdtest.Start(t)
	r := &replicas{clock: clocktest.New(t0), audit: &recorder{}}
	var err error
	if r.a, err = New(openEtcd(t, cluster), testKey, DefaultPolicy(), r.clock, r.audit); err != nil {
		t.Fatal(err)
	}
	if r.b, err = New(openEtcd(t, cluster), testKey, DefaultPolicy(), r.clock, r.audit); err != nil {
		t.Fatal(err)
	}
	// A replica with another sealing key is refused: its codes would all fail.
	other := make([]byte, KeySize)
	if _, err := New(openEtcd(t, cluster), other, DefaultPolicy(), r.clock, r.audit); !errors.Is(err, ErrBadKey) {
		t.Fatalf("a replica with another sealing key: %v, want ErrBadKey", err)
	}
	return r
}

// enroll enrolls user through replica a and moves the clock past the confirming step.
func (r *replicas) enroll(t *testing.T, user string) (string, []string) {
	t.Helper()
	e, err := r.a.Enroll(user, user+"-web", "")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := r.a.Confirm(user, user+"-web", code(t, e.Secret, r.clock.Now()))
	if err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(time.Minute)
	return e.Secret, rc
}

// race runs fa on replica a and fb on replica b at the same instant, n times each.
func race(n int, fa, fb func(i int) error) []error {
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(2)
		go func() { defer wg.Done(); <-start; errs[2*i] = fa(i) }()
		go func() { defer wg.Done(); <-start; errs[2*i+1] = fb(i) }()
	}
	close(start)
	wg.Wait()
	return errs
}

// The same TOTP code sent to two replicas at the same instant is accepted once: the step is
// checked and stored in one etcd transaction, and the loser's compare fails.
func TestClusterSameCodeOnTwoReplicas(t *testing.T) {
	t.Parallel()
	r := newReplicas(t)
	secret, _ := r.enroll(t, "alice")
	for round := range 3 {
		r.clock.Advance(PeriodSeconds * time.Second)
		c := code(t, secret, r.clock.Now())
		errs := race(4,
			func(i int) error { _, err := r.a.Verify("alice", fmt.Sprintf("a-%d", i), c); return err },
			func(i int) error { _, err := r.b.Verify("alice", fmt.Sprintf("b-%d", i), c); return err })
		accepted, replayed := 0, 0
		for _, err := range errs {
			switch protocol.ReasonOf(err) {
			case protocol.ReasonNone:
				accepted++
			case protocol.ReasonTOTPReplayed:
				replayed++
			default:
				t.Errorf("round %d: unexpected %v", round, err)
			}
		}
		if accepted != 1 || replayed != len(errs)-1 {
			t.Fatalf("round %d: %d accepted, %d replayed; want 1 and %d", round, accepted, replayed, len(errs)-1)
		}
	}
}

// Failures on either replica count towards one lockout, which both enforce.
func TestClusterLockoutShared(t *testing.T) {
	t.Parallel()
	r := newReplicas(t)
	secret, _ := r.enroll(t, "alice")
	max := DefaultPolicy().MaxFailures
	errs := race(max/2,
		func(int) error { _, err := r.a.Verify("alice", "a", wrongCode(t, secret, r.clock.Now())); return err },
		func(int) error { _, err := r.b.Verify("alice", "b", wrongCode(t, secret, r.clock.Now())); return err })
	for _, err := range errs {
		if reason := protocol.ReasonOf(err); reason != protocol.ReasonTOTPInvalid && reason != protocol.ReasonLockedOut {
			t.Fatalf("a wrong code: %v", err)
		}
	}
	if st, err := r.b.Status("alice"); err != nil || st.RecentFailures != 2*(max/2) {
		t.Fatalf("replica b sees %+v, %v; want %d failures from both", st, err, 2*(max/2))
	}
	// The last failure allowed, on a: both replicas refuse from then on, a right code too.
	for range max - 2*(max/2) {
		r.a.Verify("alice", "a", wrongCode(t, secret, r.clock.Now()))
	}
	wantReason(t, r.b.CheckLocked("alice"), protocol.ReasonLockedOut)
	_, err := r.b.Verify("alice", "b", code(t, secret, r.clock.Now()))
	wantReason(t, err, protocol.ReasonLockedOut)
}

// A recovery code sent to both replicas at once is spent once.
func TestClusterRecoveryCodeSingleUse(t *testing.T) {
	t.Parallel()
	r := newReplicas(t)
	_, rc := r.enroll(t, "alice")
	errs := race(1,
		func(int) error { _, err := r.a.VerifyRecovery("alice", "a", rc[0]); return err },
		func(int) error { _, err := r.b.VerifyRecovery("alice", "b", rc[0]); return err })
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if protocol.ReasonOf(err) != protocol.ReasonTOTPInvalid {
			t.Fatalf("the second use: %v, want totp_invalid", err)
		}
	}
	if ok != 1 {
		t.Fatalf("the recovery code was accepted %d times, want once", ok)
	}
	if st, _ := r.a.Status("alice"); st.RecoveryCodesLeft != RecoveryCodeCount-1 {
		t.Fatalf("%d recovery codes left, want %d", st.RecoveryCodesLeft, RecoveryCodeCount-1)
	}
}

// A session elevated by a code on one replica is elevated on the other, and ends on both.
func TestClusterStepUpShared(t *testing.T) {
	t.Parallel()
	r := newReplicas(t)
	secret, _ := r.enroll(t, "alice")
	if _, err := r.a.Decide("alice", "key:k1", "unlock", code(t, secret, r.clock.Now())); err != nil {
		t.Fatal(err)
	}
	if d, err := r.b.Decide("alice", "key:k1", "unlock", ""); err != nil || len(d.Factors) != 1 || d.Factors[0] != FactorStepUp {
		t.Fatalf("replica b: %+v, %v; want the step-up replica a granted", d, err)
	}
	_, err := r.b.Decide("alice", "key:k2", "unlock", "")
	wantReason(t, err, protocol.ReasonTOTPRequired) // another device is not elevated
	r.b.EndUserSessions("alice")
	_, err = r.a.Decide("alice", "key:k1", "unlock", "")
	wantReason(t, err, protocol.ReasonTOTPRequired)
	// And an elevation ends with its TTL on every replica.
	if _, err := r.b.Decide("alice", "key:k1", "unlock", code(t, secret, r.clock.Now().Add(PeriodSeconds*time.Second))); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(DefaultPolicy().StepUpTTL + PeriodSeconds*time.Second)
	_, err = r.a.Decide("alice", "key:k1", "unlock", "")
	wantReason(t, err, protocol.ReasonTOTPRequired)
}
