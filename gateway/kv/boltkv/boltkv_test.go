package boltkv_test

import (
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/gateway/kv/boltkv"
	"telematics/gateway/kv/kvtest"
)

func TestContract(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.Store {
		db, err := bolt.Open(filepath.Join(t.TempDir(), "gateway.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return boltkv.New(db)
	})
}
