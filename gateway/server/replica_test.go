package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplicaIDIsMadeOnceAndKept(t *testing.T) {
	dir := t.TempDir()
	id, err := replicaID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !validReplicaID(id) || !strings.HasPrefix(id, "gateway-") {
		t.Fatalf("made %q, want gateway-<hex>", id)
	}
	again, err := replicaID(dir)
	if err != nil || again != id {
		t.Fatalf("second start: %q, %v; want %q kept", again, err, id)
	}
	other, err := replicaID(t.TempDir())
	if err != nil || other == id {
		t.Fatalf("another data directory: %q, %v; want an id of its own", other, err)
	}
}

func TestReplicaIDFileIsChecked(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		ok            bool
	}{
		{"written by hand", "gateway-eu-west-1a\n", true},
		{"no gateway- prefix (the broker would refuse it)", "replica-1\n", false},
		{"only the prefix", "gateway-\n", false},
		{"a wildcard", "gateway-a+b\n", false},
		{"too long", "gateway-" + strings.Repeat("a", 60), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, ReplicaIDFile), []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			id, err := replicaID(dir)
			if tc.ok && (err != nil || id != strings.TrimSpace(tc.content)) {
				t.Fatalf("got %q, %v; want %q", id, err, strings.TrimSpace(tc.content))
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), ReplicaIDFile)) {
				t.Fatalf("got %q, %v; want an error naming %s", id, err, ReplicaIDFile)
			}
		})
	}
}
