package boltkv_test

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
	"telematics/gateway/kv/kvtest"
)

func TestContract(t *testing.T) { kvtest.Run(t, open) }

func BenchmarkUpdate(b *testing.B) { kvtest.Bench(b, open) }

// open is a bbolt store in t's temporary dir, with fsync as in production.
func open(t testing.TB) kv.Store {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "gateway.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return boltkv.New(db)
}

// What boltkv writes is where the gateway's packages read it today: a top-level bucket of the
// same name, and the bucket's own sequence (the audit log's keys); and the reverse.
func TestFileLayout(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "gateway.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("users"))
		if err != nil {
			return err
		}
		return b.Put([]byte("alice"), []byte(`{"name":"alice"}`))
	}); err != nil {
		t.Fatal(err)
	}
	s := boltkv.New(db)
	defer s.Close()
	ctx := t.Context()
	err = s.Update(ctx, func(tx kv.Tx) error {
		if v, err := tx.Get([]byte("users"), []byte("alice")); err != nil || string(v) != `{"name":"alice"}` {
			return fmt.Errorf("a record written with bbolt: Get = %q, %v", v, err)
		}
		seq, err := tx.NextSequence([]byte("audit"))
		if err != nil {
			return err
		}
		return tx.Put([]byte("audit"), binary.BigEndian.AppendUint64(nil, seq), []byte(`{"seq":1}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("audit"))
		if b == nil || b.Sequence() != 1 || string(b.Get(binary.BigEndian.AppendUint64(nil, 1))) != `{"seq":1}` {
			return fmt.Errorf("bbolt does not see the audit record and sequence boltkv wrote")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
