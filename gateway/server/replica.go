package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"telematics/pkg/sign"
)

// ReplicaIDFile, in the data directory, names a replica of a cluster (a shared etcd store
// behind an external broker): "gateway-" and 12 hex digits, made at its first start and kept.
// It is the replica's broker client id, so each replica has a session of its own; the store is
// shared and cannot keep it. Not a secret (0644); a copied data directory must not carry it
// to another replica (two replicas with one id take each other's session over, endlessly).
const ReplicaIDFile = "replica.id"

// replicaKeepAlive is a replica's MQTT keep-alive: the broker drops a silent replica (a lost
// machine, a cut network) after 1.5 times it, and hands the requests of the shared
// subscriptions to the live replicas from then on. One gateway keeps mqttc's 30 s.
const replicaKeepAlive = 5 * time.Second

// clustered reports whether this gateway is one replica of a cluster: its state in a store
// other gateways share and its broker one they all connect to.
func (g *Gateway) clustered() bool {
	return g.cfg.ExternalBroker != "" && g.store.Shared()
}

// replicaID reads DATA/replica.id, making it on first use.
func replicaID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, ReplicaIDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if !validReplicaID(id) {
			return "", fmt.Errorf("%s holds %q: want gateway-<letters, digits, '-' or '_'>, at most 64 characters "+
				"(delete it to make a new one)", path, clip(id))
		}
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read replica id: %w", err)
	}
	suffix := make([]byte, 6)
	if _, err := rand.Read(suffix); err != nil {
		return "", err
	}
	id := "gateway-" + hex.EncodeToString(suffix)
	if err := sign.WriteFileAtomic(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write replica id: %w", err)
	}
	return id, nil
}

// validReplicaID: the broker admits the gateway identity's client ids "gateway" and
// "gateway-…"; the rest is kept to what a log line and an etcd record carry without quoting.
func validReplicaID(id string) bool {
	rest, ok := strings.CutPrefix(id, "gateway-")
	if !ok || rest == "" || len(id) > 64 {
		return false
	}
	for _, c := range rest {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 70 {
		return s[:70] + "…"
	}
	return s
}
