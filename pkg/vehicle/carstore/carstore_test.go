package carstore

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func setSchema(t *testing.T, path, v string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte(v)) }); err != nil {
		t.Fatal(err)
	}
}

// TestSchemaUpgrade: a schema-1 file (before digital keys) opens and becomes schema 2; a file
// of a newer layout is refused rather than misread.
func TestSchemaUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), File)
	st, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	setSchema(t, path, "1")
	st, err = Open(path)
	if err != nil {
		t.Fatalf("open a schema-1 store: %v", err)
	}
	var got string
	st.db.View(func(tx *bolt.Tx) error { got = string(tx.Bucket(bucketMeta).Get(keySchema)); return nil })
	st.Close()
	if got != schemaVersion {
		t.Fatalf("schema %q after upgrade, want %q", got, schemaVersion)
	}
	setSchema(t, path, "3")
	if st, err := Open(path); err == nil || !strings.Contains(err.Error(), `schema "3"`) {
		if st != nil {
			st.Close()
		}
		t.Fatalf("open a schema-3 store: %v", err)
	}
}

func TestSecondOpenFailsClearly(t *testing.T) {
	dir := t.TempDir()
	openTestStore(t, dir)
	done := make(chan error, 1)
	go func() {
		st, err := Open(dir + "/" + File)
		if err == nil {
			st.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("second open: %v, want ErrLocked", err)
		}
		if !strings.Contains(err.Error(), "in use by another vehicle-sim process") {
			t.Errorf("error does not say what is wrong: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second open hangs instead of failing")
	}
}
