// Package etcdtest starts a real etcd inside the test process (go.etcd.io/etcd/server/v3/embed):
// one member or a small cluster, on free loopback ports, with its data in t.TempDir(), closed at
// the test's cleanup. For tests only: the gateway itself never embeds etcd. The starting is
// internal/etcdrun's, which tools use without a testing.TB.
package etcdtest

import (
	"context"
	"testing"

	"telematics/internal/etcdrun"
)

// ReadyTimeout bounds how long a start waits for the cluster to serve (a loaded 2-core machine
// elects a leader in well under a second; this is the bound for a failure, not the
// expectation).
const ReadyTimeout = etcdrun.DefaultReadyTimeout

// Cluster is a running embedded etcd.
type Cluster struct{ run *etcdrun.Cluster }

// Start starts one member.
func Start(t testing.TB) *Cluster { return StartCluster(t, 1) }

// StartCluster starts n members that form one cluster, and waits until each serves clients.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	run, err := etcdrun.Start(context.Background(), etcdrun.Options{Dir: t.TempDir(), Members: n,
		Mode: etcdrun.ModeEmbedded, NoFsync: true, ReadyTimeout: ReadyTimeout}) // test data: speed over durability
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	c := &Cluster{run: run}
	t.Cleanup(c.Close)
	return c
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string { return c.run.Endpoints() }

// StopMember stops member i abruptly-enough for a test (its server closes its listeners and
// stops); the others keep running. Stopping an already stopped member does nothing.
func (c *Cluster) StopMember(i int) { _ = c.run.StopMember(i) }

// RestartMember starts stopped member i again on its data and its addresses, and waits until
// it serves clients; a running member is left alone.
func (c *Cluster) RestartMember(t testing.TB, i int) {
	t.Helper()
	if err := c.run.RestartMember(i); err != nil {
		t.Fatalf("restart embedded etcd member %d: %v", i, err)
	}
}

// Close stops every member; it is idempotent.
func (c *Cluster) Close() { _ = c.run.Close() }
