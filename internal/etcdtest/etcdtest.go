// Package etcdtest starts a real etcd inside the test process (go.etcd.io/etcd/server/v3/embed):
// one member or a small cluster, on free loopback ports, with its data in t.TempDir(), closed at
// the test's cleanup. For tests only: the gateway itself never embeds etcd.
package etcdtest

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"telematics/internal/testutil"
)

// ReadyTimeout bounds how long a start waits for the cluster to serve (a loaded 2-core machine
// elects a leader in well under a second; this is the bound for a failure, not the
// expectation).
const ReadyTimeout = 30 * time.Second

// Cluster is a running embedded etcd.
type Cluster struct {
	members []*embed.Etcd
	clients []string
	cfgs    []*embed.Config
}

// Start starts one member.
func Start(t testing.TB) *Cluster { return StartCluster(t, 1) }

// StartCluster starts n members that form one cluster, and waits until each serves clients.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	cfgs := make([]*embed.Config, n)
	var initial []string
	for i := range n {
		peer, client := freeURL(t), freeURL(t)
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.InitialClusterToken = "etcdtest"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = true // test data: speed over durability
		initial = append(initial, cfg.Name+"="+peer.String())
		cfgs[i] = cfg
	}
	c := &Cluster{cfgs: cfgs}
	t.Cleanup(c.Close)
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			t.Fatalf("start embedded etcd %s: %v", cfg.Name, err)
		}
		c.members = append(c.members, e)
		c.clients = append(c.clients, cfg.AdvertiseClientUrls[0].String())
	}
	deadline := time.After(ReadyTimeout)
	for _, e := range c.members {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			t.Fatalf("embedded etcd failed: %v", err)
		case <-deadline:
			t.Fatalf("embedded etcd not ready within %v", ReadyTimeout)
		}
	}
	return c
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string { return append([]string(nil), c.clients...) }

// StopMember stops member i abruptly-enough for a test (its server closes its listeners and
// stops); the others keep running. Stopping an already stopped member does nothing.
func (c *Cluster) StopMember(i int) {
	if c.members[i] != nil {
		c.members[i].Close()
		c.members[i] = nil
	}
}

// RestartMember starts stopped member i again on its data and its addresses, and waits until
// it serves clients; a running member is left alone.
func (c *Cluster) RestartMember(t testing.TB, i int) {
	t.Helper()
	if c.members[i] != nil {
		return
	}
	e, err := embed.StartEtcd(c.cfgs[i])
	if err != nil {
		t.Fatalf("restart embedded etcd %s: %v", c.cfgs[i].Name, err)
	}
	c.members[i] = e
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("embedded etcd failed: %v", err)
	case <-time.After(ReadyTimeout):
		t.Fatalf("embedded etcd not ready within %v", ReadyTimeout)
	}
}

// Close stops every member; it is idempotent.
func (c *Cluster) Close() {
	for i := range c.members {
		c.StopMember(i)
	}
}

// freeURL is an http URL on a loopback port that was free a moment ago (etcd must be told
// its advertised URLs before it listens, so port 0 will not do).
func freeURL(t testing.TB) url.URL {
	return url.URL{Scheme: "http", Host: testutil.FreeAddr(t)}
}
