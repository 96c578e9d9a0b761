package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/internal/etcdtest"
	"telematics/internal/testutil"
	"telematics/pkg/api"
)

// Two replicas on one etcd behind the standalone broker: each connects with a client id of its
// own (DATA/replica.id), a clean session and a 5 s keep-alive, subscribes to the requests and results through
// $share/gateway/…, and neither takes the other's session over.
func TestReplicasHaveSessionsOfTheirOwn(t *testing.T) {
	etcd := etcdtest.Start(t)
	dir1, dir2 := t.TempDir(), t.TempDir()
	b := harness.MustStartBroker(t, dir1)
	cluster := func(c *server.Config) {
		c.ExternalBroker = "tcp://" + b.MQTTAddr()
		c.Store = harness.EtcdStore(etcd.Endpoints())
	}
	g1 := startGateway(t, dir1, cluster)
	copyKeyFiles(t, dir1, dir2)
	g2 := startGateway(t, dir2, cluster)

	ids := make([]string, 2)
	for i, dir := range []string{dir1, dir2} {
		raw, err := os.ReadFile(filepath.Join(dir, server.ReplicaIDFile))
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = strings.TrimSpace(string(raw))
	}
	if ids[0] == ids[1] {
		t.Fatalf("both replicas are %s", ids[0])
	}
	srv := b.Server()
	for _, id := range ids {
		testutil.Eventually(t, 10*time.Second, func() error {
			cl, ok := srv.Clients.Get(id)
			if !ok || cl.Closed() {
				return fmt.Errorf("replica %s not connected", id)
			}
			if !cl.Properties.Clean {
				return fmt.Errorf("replica %s connected with a persistent session", id)
			}
			if cl.State.Keepalive != 5 {
				// The broker gives a silent replica up after 1.5 keep-alives.
				return fmt.Errorf("replica %s keep-alive %d s, want 5", id, cl.State.Keepalive)
			}
			for _, f := range []string{"$share/gateway/app/+/cmd", "$share/gateway/v/+/result", "$share/gateway/v/+/keys/ack", "$share/gateway/v/+/events"} {
				if _, ok := cl.State.Subscriptions.Get(f); !ok {
					return fmt.Errorf("replica %s has no subscription %s", id, f)
				}
			}
			return nil
		})
	}
	// Both stay connected: a takeover would close one of them.
	first := map[string]any{}
	for _, id := range ids {
		cl, _ := srv.Clients.Get(id)
		first[id] = cl
	}
	for _, g := range []*server.Gateway{g1, g2} {
		testutil.Eventually(t, 10*time.Second, func() error {
			return api.NewClient(g.HTTPURL(), "").Do(context.Background(), http.MethodGet, "/readyz", nil, nil)
		})
	}
	for _, id := range ids {
		cl, ok := srv.Clients.Get(id)
		if !ok || any(cl) != first[id] || cl.Closed() {
			t.Fatalf("replica %s lost its session", id)
		}
	}
}

// copyKeyFiles gives a replica's data directory the files every replica shares (keys, admin
// token, device CA), not the store or the first replica's id.
func copyKeyFiles(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || n == server.ReplicaIDFile || strings.HasSuffix(n, ".db") || strings.HasSuffix(n, ".lock") {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(from, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, n), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
