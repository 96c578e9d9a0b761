package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/internal/etcdtest"
	"telematics/pkg/protocol"
)

// On etcd, deleting a user reads only their cars (the per-user index), so it works with far
// more cars than one transaction carries (128 keys): refused naming exactly the user's cars
// while they have a role, done once they have none. State written before the index (a
// migrated bbolt file) is indexed when the store is opened.
func TestEtcdDeleteUserWithManyCars(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	open := func() *Store {
		kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: "/userindex-test/", Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		s, err := OpenKV(kvs)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open()
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		if err := s.AddUser(User{Name: u, PasswordHash: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	const n = 300
	var vs []Vehicle
	for i := range n {
		v := Vehicle{VIN: fmt.Sprintf("VIN%014d", i)}
		if i%100 == 7 {
			v.Users = map[string]protocol.Role{"dave": protocol.RoleOwner} // given at provisioning
		}
		vs = append(vs, v)
	}
	if err := s.AddVehicles(vs); err != nil {
		t.Fatal(err)
	}
	alices := []string{vs[5].VIN, vs[150].VIN, vs[299].VIN}
	for _, vin := range alices {
		if err := s.Assign(vin, "alice", protocol.RoleOwner); err != nil {
			t.Fatal(err)
		}
	}
	// A role given and taken back leaves no trace.
	if err := s.Assign(vs[42].VIN, "alice", protocol.RoleDriver); err != nil {
		t.Fatal(err)
	}
	unassign := func(vin, user string) {
		t.Helper()
		if err := s.Update(context.Background(), func(tx kv.Tx) error { return UnassignTx(tx, vin, user) }); err != nil {
			t.Fatal(err)
		}
	}
	unassign(vs[42].VIN, "alice")

	err := s.DeleteUser("alice")
	if !errors.Is(err, ErrHasVehicles) || !strings.HasSuffix(err.Error(), ": "+strings.Join(alices, ", ")) {
		t.Fatalf("deleting alice with %d cars in the store: %v; want ErrHasVehicles naming %v", n, err, alices)
	}
	if err := s.DeleteUser("dave"); !errors.Is(err, ErrHasVehicles) || !strings.Contains(err.Error(), vs[7].VIN) || !strings.Contains(err.Error(), vs[207].VIN) {
		t.Fatalf("deleting dave, owner since provisioning: %v", err)
	}
	if err := s.DeleteUser("bob"); err != nil {
		t.Fatalf("deleting bob, who has no car, among %d cars: %v", n, err)
	}
	for _, vin := range alices {
		unassign(vin, "alice")
	}
	if err := s.DeleteUser("alice"); err != nil {
		t.Fatalf("deleting alice once she has no car: %v", err)
	}

	// State from before the index: no marker, no entries, and carol given a car then.
	err = s.Update(context.Background(), func(tx kv.Tx) error {
		if err := tx.Delete(bucketMeta, keyUserIndex); err != nil {
			return err
		}
		return deleteUserIndexTx(tx, "dave")
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(vs[250].VIN, "carol", protocol.RoleDriver); err != nil {
		t.Fatal(err)
	}
	s2 := open() // a replica of this build starts: the index is built
	if err := s2.DeleteUser("carol"); !errors.Is(err, ErrHasVehicles) || !strings.HasSuffix(err.Error(), ": "+vs[250].VIN) {
		t.Fatalf("deleting carol, given a car before the index: %v", err)
	}
	if err := s2.DeleteUser("dave"); !errors.Is(err, ErrHasVehicles) || !strings.Contains(err.Error(), vs[107].VIN) {
		t.Fatalf("deleting dave after the rebuild: %v", err)
	}
	var state string
	if err := s2.View(context.Background(), func(tx kv.Tx) (err error) { state, err = userIndexState(tx); return }); err != nil || state != userIndexComplete {
		t.Fatalf("index state %q, %v; want complete", state, err)
	}
}

// A bbolt file keeps no index: its format and its writes stay as they were, and deleting a
// user scans the cars as before.
func TestBoltKeepsNoUserIndex(t *testing.T) {
	t.Parallel()
	s, err := Open(filepath.Join(t.TempDir(), "g.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.AddUser(User{Name: "alice", PasswordHash: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddVehicles([]Vehicle{{VIN: "VIN00000000000001", Users: map[string]protocol.Role{"alice": protocol.RoleOwner}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser("alice"); !errors.Is(err, ErrHasVehicles) {
		t.Fatalf("deleting alice: %v", err)
	}
	err = s.View(context.Background(), func(tx kv.Tx) error {
		if state, err := userIndexState(tx); err != nil || state != "" {
			return fmt.Errorf("index marker %q, %v", state, err)
		}
		return tx.Scan(bucketUserVehicles, nil, nil, func(k, _ []byte) error { return fmt.Errorf("index entry %s", k) })
	})
	if err != nil {
		t.Fatal(err)
	}
}
