package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/internal/etcdtest"
)

// On etcd, whose transactions carry at most 128 keys, the writes of many records work in
// batches: adding many cars, flushing many twins, pruning many command ids.
func TestEtcdLargeWritesInBatches(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.Start(t)
	kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: "/store-test/", Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenKV(kvs)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Shared() {
		t.Fatal("a store on etcd is not shared")
	}
	const n = 3*vehicleBatch + 7
	var vs []Vehicle
	var twins []Twin
	for i := range n {
		vin := fmt.Sprintf("VIN%014d", i)
		vs = append(vs, Vehicle{VIN: vin, CreatedMs: int64(i)})
		twins = append(twins, Twin{VIN: vin, Status: "online", StatusMs: int64(i)})
	}
	if err := s.AddVehicles(vs); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ListVehicles(); err != nil || len(got) != n {
		t.Fatalf("%d vehicles, %v; want %d", len(got), err, n)
	}
	// One that exists already: refused before anything is added.
	more := []Vehicle{{VIN: "VIN99999999999999"}}
	more = append(more, vs[len(vs)-vehicleBatch-1:]...)
	if err := s.AddVehicles(more); !errors.Is(err, ErrExists) {
		t.Fatalf("adding existing cars: %v, want ErrExists", err)
	}
	if _, err := s.GetVehicle("VIN99999999999999"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a car of a refused batch was added: %v", err)
	}
	if err := s.PutTwins(twins); err != nil {
		t.Fatal(err)
	}
	if got, err := s.LoadTwins(); err != nil || len(got) != n {
		t.Fatalf("%d twins, %v; want %d", len(got), err, n)
	}
	err = s.Update(t.Context(), func(tx kv.Tx) error {
		for i := range 120 {
			if err := PutCommandID(tx, fmt.Sprint("dead-", i), 100); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(t.Context(), func(tx kv.Tx) error {
		for i := range 60 {
			if err := PutCommandID(tx, fmt.Sprint("live-", i), 1000); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if pruned, err := s.PruneCommandIDs(200, 500); err != nil || pruned != 120 {
		t.Fatalf("pruned %d, %v; want 120", pruned, err)
	}
	if seen, err := s.SeenCommandIDs(200); err != nil || len(seen) != 60 || seen["live-0"] != 500 {
		t.Fatalf("after pruning: %d ids (live-0 until %d), %v; want 60 cut to 500", len(seen), seen["live-0"], err)
	}
}
