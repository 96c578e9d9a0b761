package harness

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"telematics/internal/etcdtest"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// Two gateways on one etcd (and one data directory for their key files) answer with the same
// state: what one provisions the other knows, a token one issues the other accepts. With etcd
// stopped both are unready and refuse writes with `internal` within the store's bound; with
// etcd back both serve again.
func TestTwoGatewaysOnOneEtcd(t *testing.T) {
	ctx := context.Background()
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	o := Options{Dir: dir, Store: EtcdStore(etcd.Endpoints()), StorePrefix: "/harness-test/", PasswordParams: &cheap}
	a := MustStart(t, o)
	b := MustStart(t, o)

	creds, err := a.Provision(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	vin := creds[0].VIN
	if err := a.AddUser(ctx, "alice", "correct horse battery", vin); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Client().Vehicle(ctx, vin); err != nil || v.Users["alice"] != protocol.RoleOwner {
		t.Fatalf("the other gateway sees %+v, %v; want alice owning %s", v, err, vin)
	}
	p := &Person{Name: "alice", Password: "correct horse battery"}
	if err := p.Login(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := api.NewClient(a.HTTPURL(), "").WithToken(p.Session.Token).TOTPStatus(ctx); err != nil {
		t.Fatalf("a token of one gateway on the other: %v", err)
	}

	etcd.StopMember(0)
	for name, c := range map[string]*Cloud{"a": a, "b": b} {
		testutil.Eventually(t, 30*time.Second, func() error {
			err := c.Client().Ready(ctx)
			var ae *api.Error
			if !errors.As(err, &ae) || ae.Status != 503 || !strings.Contains(ae.Message, "store unavailable") {
				return fmt.Errorf("gateway %s with etcd stopped: /readyz %v, want 503 store unavailable", name, err)
			}
			return nil
		})
	}
	err = a.Client().AddUser(ctx, "bob", "correct horse battery")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Reason != protocol.ReasonInternal {
		t.Fatalf("a write with etcd stopped: %v, want a refusal with reason internal", err)
	}

	etcd.RestartMember(t, 0)
	for name, c := range map[string]*Cloud{"a": a, "b": b} {
		testutil.Eventually(t, 60*time.Second, func() error {
			if err := c.Client().Ready(ctx); err != nil {
				return fmt.Errorf("gateway %s with etcd back: %v", name, err)
			}
			return nil
		})
	}
	if err := b.Client().AddUser(ctx, "bob", "correct horse battery"); err != nil {
		t.Fatalf("a write with etcd back: %v", err)
	}
	if users, err := a.Client().Users(ctx); err != nil || len(users) != 2 {
		t.Fatalf("users after etcd came back: %+v, %v", users, err)
	}
}
