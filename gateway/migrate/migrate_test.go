package migrate_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/accounts"
	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/migrate"
	"telematics/gateway/server"
	"telematics/gateway/store"
	"telematics/internal/etcdtest"
	"telematics/pkg/cmdline"
)

var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

// gatewayFile runs a real gateway with a car, an owner who logged in, enrolled TOTP and paired
// a phone key, stops it, and returns its data directory; with keepRunning the gateway is left
// up (holding the file's lock) and stopped at the test's cleanup.
func gatewayFile(t *testing.T, keepRunning bool) (dir string, cloud *harness.Cloud) {
	t.Helper()
	ctx := context.Background()
	c := harness.MustStart(t, harness.Options{PasswordParams: &cheap})
	creds, err := c.Provision(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	vins := []string{creds[0].VIN, creds[1].VIN}
	fleet := harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: c.BrokerURL(), Creds: creds})
	if err := c.WaitOnline(ctx, 30*time.Second, vins...); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"alice", "bob"} {
		p := &harness.Person{Name: name, Password: "correct horse battery " + name}
		if err := c.AddUser(ctx, p.Name, p.Password, vins[i]); err != nil {
			t.Fatal(err)
		}
		if err := p.Login(ctx, c); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Enroll(ctx, c); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Pair(ctx, vins[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitSynced(ctx, 30*time.Second, vins...); err != nil {
		t.Fatal(err)
	}
	if keepRunning {
		return c.Dir, c
	}
	fleet.Stop()
	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	return c.Dir, nil
}

// dump is every bucket of a store: "bucket" -> sorted "key=value" lines and "#seq=N".
type dump map[string][]string

func dumpBolt(t *testing.T, path string) dump {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d := dump{}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			var lines []string
			if s := b.Sequence(); s != 0 {
				lines = append(lines, fmt.Sprintf("#seq=%d", s))
			}
			b.ForEach(func(k, v []byte) error {
				lines = append(lines, fmt.Sprintf("%x=%x", k, v))
				return nil
			})
			if len(lines) > 0 {
				d[string(name)] = lines
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func dumpEtcd(t *testing.T, s *etcdkv.Store) dump {
	t.Helper()
	ctx := context.Background()
	names, err := s.Buckets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := dump{}
	for _, name := range names {
		var lines []string
		err := s.View(ctx, func(tx kv.Tx) error {
			if seq, err := tx.Sequence([]byte(name)); err != nil || seq != 0 {
				lines = append(lines, fmt.Sprintf("#seq=%d", seq))
			}
			return tx.Scan([]byte(name), nil, nil, func(k, v []byte) error {
				lines = append(lines, fmt.Sprintf("%x=%x", k, v))
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		d[name] = lines
	}
	return d
}

func compare(t *testing.T, want, got dump) {
	t.Helper()
	for name, lines := range want {
		if !slices.Equal(lines, got[name]) {
			t.Errorf("bucket %s: source has %d entries, target %d (or they differ)", name, len(lines), len(got[name]))
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("bucket %s is in the target only", name)
		}
	}
}

func openEtcd(t *testing.T, c *etcdtest.Cluster, prefix string) *etcdkv.Store {
	t.Helper()
	s, err := etcdkv.Open(etcdkv.Options{Endpoints: c.Endpoints(), Prefix: prefix, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A real gateway's file (users, TOTP, keys, whitelists, audit) lands in etcd bucket by bucket,
// key by key, with each sequence; a second run finds it there and writes nothing; a target
// with other data is refused, naming it, and --force makes it the source's exactly.
func TestMigrateRealGateway(t *testing.T) {
	dir, _ := gatewayFile(t, false)
	path := filepath.Join(dir, server.DBFile)
	source := dumpBolt(t, path)
	for _, b := range []string{"users", "vehicles", "keys", "whitelists", "totp", "totp_meta", "audit", "meta"} {
		if len(source[b]) == 0 {
			t.Fatalf("the gateway left bucket %s empty: the test would prove little (buckets: %v)", b, keysOf(source))
		}
	}
	cluster := etcdtest.Start(t)
	target := openEtcd(t, cluster, "/telematics/")
	ctx := context.Background()

	rep, err := migrate.Run(ctx, migrate.Options{From: path, To: target})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Verified || rep.AlreadyMigrated || rep.Removed != 0 {
		t.Fatalf("first run: %+v", rep)
	}
	total := 0
	for _, b := range rep.Buckets {
		keys := len(source[b.Name])
		if keys > 0 && strings.HasPrefix(source[b.Name][0], "#seq=") {
			keys--
		}
		if b.Keys != keys {
			t.Errorf("report: bucket %s %d keys, the file has %d", b.Name, b.Keys, keys)
		}
		total += b.Keys
	}
	if rep.Keys != total || total == 0 {
		t.Errorf("report: %d keys in all, buckets sum to %d", rep.Keys, total)
	}
	compare(t, source, dumpEtcd(t, target))

	again, err := migrate.Run(ctx, migrate.Options{From: path, To: target})
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if !again.AlreadyMigrated || !again.Verified || again.Written != 0 || again.Removed != 0 {
		t.Fatalf("second run: %+v, want already migrated, nothing written", again)
	}
	compare(t, source, dumpEtcd(t, target))

	// Another prefix with other data: refused, naming the bucket; --force replaces it.
	other := openEtcd(t, cluster, "/other/")
	err = other.Update(ctx, func(tx kv.Tx) error {
		if err := tx.Put([]byte("users"), []byte("mallory"), []byte("{}")); err != nil {
			return err
		}
		if err := tx.Put([]byte("stale"), []byte("k"), []byte("v")); err != nil {
			return err
		}
		return tx.SetSequence([]byte("audit"), 1<<40)
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = migrate.Run(ctx, migrate.Options{From: path, To: other})
	if !errors.Is(err, migrate.ErrTargetNotEmpty) || !strings.Contains(err.Error(), "stale (1 keys, sequence 0)") ||
		!strings.Contains(err.Error(), "--force") {
		t.Fatalf("non-empty target: %v, want ErrTargetNotEmpty naming bucket stale and --force", err)
	}
	if got := dumpEtcd(t, other); len(got) != 3 || len(got["users"]) != 1 {
		t.Fatalf("a refused target was changed: %v", got)
	}
	forced, err := migrate.Run(ctx, migrate.Options{From: path, To: other, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !forced.Verified || forced.Removed != 2 {
		t.Fatalf("forced run: %+v, want verified, 2 removed (mallory, stale/k)", forced)
	}
	compare(t, source, dumpEtcd(t, other))
}

// A running gateway holds its file: migrate refuses within its lock timeout, says why, and
// writes nothing.
func TestMigrateRefusesALockedSource(t *testing.T) {
	dir, _ := gatewayFile(t, true)
	cluster := etcdtest.Start(t)
	target := openEtcd(t, cluster, "/telematics/")
	_, err := migrate.Run(context.Background(), migrate.Options{From: filepath.Join(dir, server.DBFile), To: target, LockTimeout: 200 * time.Millisecond})
	if !errors.Is(err, migrate.ErrSourceLocked) || !strings.Contains(err.Error(), "stop the gateway") {
		t.Fatalf("locked source: %v, want ErrSourceLocked saying to stop the gateway", err)
	}
	if got := dumpEtcd(t, target); len(got) != 0 {
		t.Fatalf("the target was written: %v", keysOf(got))
	}
}

func keysOf(d dump) []string {
	var out []string
	for k := range d {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// The command line: flags checked as usage errors, the report for people and as JSON, the
// refusal of a non-empty target and of a file that is no gateway.
func TestCommand(t *testing.T) {
	cluster := etcdtest.Start(t)
	to := "etcd://" + strings.TrimPrefix(cluster.Endpoints()[0], "http://")
	dir := t.TempDir()
	// A gateway's file without running one: a fresh store is a valid (empty) gateway.
	c, err := harness.Start(context.Background(), harness.Options{Dir: dir, PasswordParams: &cheap})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		root := cmdline.NewRoot("gateway", "test", "GATEWAY")
		store := migrate.Command()
		cmdline.PrefixEnv(store, "GATEWAY_MIGRATE")
		root.AddCommand(store)
		var out, errb bytes.Buffer
		code := cmdline.ExecuteWithEnv(context.Background(), root, append([]string{"store", "migrate"}, args...), nil, strings.NewReader(""), &out, &errb)
		return out.String(), errb.String(), code
	}
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"no from", []string{"--to", to}, `--from: "" is not bbolt://`},
		{"bad from", []string{"--from", dir, "--to", to}, "is not bbolt://DATA_DIR"},
		{"bad to", []string{"--from", "bbolt://" + dir, "--to", "http://127.0.0.1:2379"}, "--to: \"http://127.0.0.1:2379\" is not etcd://"},
		{"bad port", []string{"--from", "bbolt://" + dir, "--to", "etcd://h:1,h:x"}, `"h:x" in "etcd://h:1,h:x" has no valid port`},
		{"bad prefix", []string{"--from", "bbolt://" + dir, "--to", to, "--prefix", "x"}, "--prefix"},
	} {
		_, errs, code := run(tc.args...)
		if code != 2 || !strings.Contains(errs, tc.err) {
			t.Errorf("%s: exit %d, stderr %q, want 2 and %q", tc.name, code, errs, tc.err)
		}
	}
	_, errs, code := run("--from", "bbolt://"+filepath.Join(dir, "nothing.db"), "--to", to)
	if code != 1 || !strings.Contains(errs, "nothing.db") {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}

	out, errs, code := run("--from", "bbolt://"+dir, "--to", to)
	if code != 0 || !strings.Contains(out, "verified:") || !strings.Contains(out, "meta") {
		t.Fatalf("migrate: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	out, errs, code = run("--from", "bbolt://"+dir, "--to", to, "--json")
	var rep struct {
		OK              bool `json:"ok"`
		AlreadyMigrated bool `json:"already_migrated"`
		Buckets         []migrate.Bucket
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.OK || !rep.AlreadyMigrated || len(rep.Buckets) == 0 {
		t.Fatalf("second run --json: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	_, errs, code = run("--from", "bbolt://"+dir, "--to", to, "--prefix", "/telematics/x/")
	if code != 0 {
		t.Fatalf("a fresh prefix: exit %d, stderr %q", code, errs)
	}
}

// A bucket larger than one etcd transaction takes (by count and by bytes) goes over in
// batches, and an empty bucket (bbolt keeps it, kv has none) is no difference.
func TestMigrateBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), server.DBFile)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists([]byte("meta"))
		if err != nil {
			return err
		}
		if err := meta.Put([]byte("schema_version"), binary.BigEndian.AppendUint64(nil, store.SchemaVersion)); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists([]byte("audit"))
		if err != nil {
			return err
		}
		for i := range 1000 {
			if err := b.Put(fmt.Appendf(nil, "%08d", i), bytes.Repeat([]byte{byte(i)}, 2000)); err != nil {
				return err
			}
		}
		if err := b.SetSequence(1000); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists([]byte("empty")); err != nil {
			return err
		}
		big, err := tx.CreateBucketIfNotExists([]byte("big"))
		if err != nil {
			return err
		}
		for i := range 4 {
			if err := big.Put(fmt.Appendf(nil, "%d", i), bytes.Repeat([]byte{'x'}, 300<<10)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	target := openEtcd(t, etcdtest.Start(t), "/telematics/")
	rep, err := migrate.Run(context.Background(), migrate.Options{From: path, To: target})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Verified || rep.Keys < 1004 {
		t.Fatalf("report %+v", rep)
	}
	compare(t, dumpBolt(t, path), dumpEtcd(t, target))
}

// A bbolt file that is no gateway's is refused before anything is written.
func TestMigrateRefusesAForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("x")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	target := openEtcd(t, etcdtest.Start(t), "/telematics/")
	if _, err := migrate.Run(context.Background(), migrate.Options{From: path, To: target}); !errors.Is(err, migrate.ErrNotGateway) {
		t.Fatalf("foreign file: %v, want ErrNotGateway", err)
	}
}

// The audit log goes on where the single gateway left it: replicas on the target append
// through the inbox (package audit) and their records are numbered after the migrated ones. A
// target where a cluster ran (records left in the inbox) is refused, naming the inbox, and
// --force replaces it, inbox included.
func TestMigrateAuditGoesOnInTheCluster(t *testing.T) {
	dir, _ := gatewayFile(t, false)
	path := filepath.Join(dir, server.DBFile)
	source := dumpBolt(t, path)
	var seq uint64
	if _, err := fmt.Sscanf(source["audit"][0], "#seq=%d", &seq); err != nil || seq == 0 {
		t.Fatalf("the source's audit sequence: %q, %v", source["audit"][0], err)
	}
	records := len(source["audit"]) - 1
	cluster := etcdtest.Start(t)
	ctx := context.Background()

	// A cluster ran on the target: records numbered and some still in the inbox.
	ran := openEtcd(t, cluster, "/telematics/")
	lg, err := audit.Open(ran)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := lg.Append(audit.Event{Kind: audit.KindAdmin, Outcome: fmt.Sprint("old-cluster-", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := lg.Count(); err != nil || n != 3 {
		t.Fatalf("count %d, %v", n, err)
	}
	if err := lg.Append(audit.Event{Kind: audit.KindAdmin, Outcome: "old-cluster-unnumbered"}); err != nil {
		t.Fatal(err)
	}
	_, err = migrate.Run(ctx, migrate.Options{From: path, To: ran})
	if !errors.Is(err, migrate.ErrTargetNotEmpty) || !strings.Contains(err.Error(), "auditin (1 keys, sequence 0)") {
		t.Fatalf("target with an inbox: %v, want ErrTargetNotEmpty naming auditin", err)
	}
	rep, err := migrate.Run(ctx, migrate.Options{From: path, To: ran, Force: true})
	if err != nil || !rep.Verified {
		t.Fatalf("forced: %+v, %v", rep, err)
	}
	compare(t, source, dumpEtcd(t, ran))

	// Two replicas append; the log goes on from the single gateway's numbers.
	a, b := openEtcd(t, cluster, "/telematics/"), openEtcd(t, cluster, "/telematics/")
	la, err := audit.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := audit.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := lb.Count(); err != nil || n != records {
		t.Fatalf("count after the migration %d, %v; want the source's %d", n, err, records)
	}
	if err := la.Append(audit.Event{Kind: audit.KindAdmin, Outcome: "replica-a"}); err != nil {
		t.Fatal(err)
	}
	if err := lb.Append(audit.Event{Kind: audit.KindAdmin, Outcome: "replica-b"}); err != nil {
		t.Fatal(err)
	}
	got, err := la.Query(audit.Filter{Limit: records + 10})
	if err != nil || len(got) != records+2 {
		t.Fatalf("%d records, %v; want %d", len(got), err, records+2)
	}
	if got[1].Seq != seq+1 || got[0].Seq != seq+2 || got[1].Outcome != "replica-a" || got[0].Outcome != "replica-b" {
		t.Fatalf("the replicas' records: %+v, %+v; want numbers %d and %d", got[1], got[0], seq+1, seq+2)
	}
	for _, e := range got {
		if strings.HasPrefix(e.Outcome, "old-cluster") {
			t.Fatalf("a record of the replaced target survived --force: %+v", e)
		}
	}
}
