package server_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/server"
	"telematics/internal/etcdtest"
)

// `gateway rotate-key` and `--retire-previous` on a gateway whose state is in etcd (the data
// directory holds only its key files): the rotation is made, the retirement is refused naming
// the car that has not made the hop, read from etcd, and once that car is decommissioned the
// previous key is retired and the retirement audited in etcd. A prefix without a gateway's
// state is refused, and so is the data directory alone (no gateway.db).
func TestRotateKeyOnEtcd(t *testing.T) {
	ctx := context.Background()
	etcd := etcdtest.Start(t)
	dir := t.TempDir()
	const prefix = "/rotate-test/"
	o := harness.Options{Dir: dir, Store: harness.EtcdStore(etcd.Endpoints()), StorePrefix: prefix, PasswordParams: &cheap}
	c := harness.MustStart(t, o)
	creds, err := c.Provision(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	hopping, gone := creds[0].VIN, creds[1].VIN
	if _, err := c.Client().Decommission(ctx, gone, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, server.DBFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a gateway on etcd left %s in its data directory: %v", server.DBFile, err)
	}

	cfg := server.DefaultConfig()
	cfg.Data, cfg.Store, cfg.StorePrefix = dir, o.Store, prefix
	if err := server.RetirePreviousKeyStore(cfg, io.Discard); !errors.Is(err, server.ErrNoPreviousKey) {
		t.Fatalf("retire without a rotation: %v", err)
	}
	if err := server.RotateSigningKey(dir, io.Discard); err == nil || !strings.Contains(err.Error(), "no gateway in") {
		t.Fatalf("rotate-key without --store on a directory with no gateway.db: %v", err)
	}
	other := cfg
	other.StorePrefix = "/not-a-gateway/"
	if err := server.RotateSigningKeyStore(other, io.Discard); err == nil || !strings.Contains(err.Error(), "no gateway state under prefix /not-a-gateway/") {
		t.Fatalf("rotate-key on an empty prefix: %v", err)
	}
	if err := server.RotateSigningKeyStore(cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, server.PrevSigningKeyFile)); err != nil {
		t.Fatalf("no previous key after rotate-key: %v", err)
	}
	err = server.RetirePreviousKeyStore(cfg, io.Discard)
	if !errors.Is(err, server.ErrCarsNotHopped) || !strings.Contains(err.Error(), hopping) || strings.Contains(err.Error(), gone) {
		t.Fatalf("retire before %s made the hop: %v", hopping, err)
	}

	// The car leaves the fleet; nothing depends on the previous key any more.
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client().Decommission(ctx, hopping, true); err != nil {
		t.Fatal(err)
	}
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	if err := server.RetirePreviousKeyStore(cfg, io.Discard); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, server.PrevSigningKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("previous key still there after the retirement: %v", err)
	}
	kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: etcd.Endpoints(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer kvs.Close()
	lg, err := audit.Open(kvs)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := lg.Query(audit.Filter{Kind: audit.KindAdmin, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range evs {
		found = found || ev.Outcome == "signing_key_retired"
	}
	if !found {
		t.Fatalf("no signing_key_retired record in etcd's audit log: %+v", evs)
	}
}
