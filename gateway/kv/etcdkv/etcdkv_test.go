package etcdkv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/kv/kvtest"
	"telematics/internal/etcdtest"
)

// One embedded etcd for the contract; each case gets a prefix of its own.
func TestContract(t *testing.T) {
	cluster := etcdtest.Start(t)
	kvtest.Run(t, func(t *testing.T) kv.Store {
		s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Prefix: "/" + t.Name() + "/", Timeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// An unreachable etcd gives kv.ErrUnavailable within the store's bound, not a hang.
func TestUnreachable(t *testing.T) {
	cluster := etcdtest.Start(t)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	cluster.Close()
	for name, op := range map[string]func() error{
		"View": func() error {
			return s.View(ctx, func(tx kv.Tx) error { _, err := tx.Get([]byte("b"), []byte("k")); return err })
		},
		"Update": func() error {
			return s.Update(ctx, func(tx kv.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("w")) })
		},
	} {
		done := make(chan error, 1)
		go func() { done <- op() }()
		select {
		case err := <-done:
			if !errors.Is(err, kv.ErrUnavailable) || !strings.Contains(err.Error(), cluster.Endpoints()[0]) {
				t.Errorf("%s with etcd down = %v, want ErrUnavailable naming the endpoint", name, err)
			}
		case <-time.After(30 * time.Second): // a hang detector, far beyond the 1s bound
			t.Fatalf("%s with etcd down did not return", name)
		}
	}
}

// A transaction larger than etcd takes in one Txn fails before it is sent, and writes nothing.
func TestTooLarge(t *testing.T) {
	cluster := etcdtest.Start(t)
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	err = s.Update(ctx, func(tx kv.Tx) error {
		for i := range 200 {
			if err := tx.Put([]byte("b"), fmt.Appendf(nil, "k%03d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("Update of 200 keys = %v, want ErrTooLarge", err)
	}
	n := 0
	if err := s.View(ctx, func(tx kv.Tx) error {
		return tx.Scan([]byte("b"), nil, nil, func(k, v []byte) error { n++; return nil })
	}); err != nil || n != 0 {
		t.Fatalf("after a refused Update: %d keys, %v; want none", n, err)
	}
}
