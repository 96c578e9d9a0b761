package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// holdEnv, when set, makes the test binary a second process that holds the store at its
// value open until its standard input closes (see TestSecondProcessGetsErrLocked).
const holdEnv = "STORE_TEST_HOLD"

func TestMain(m *testing.M) {
	if path := os.Getenv(holdEnv); path != "" {
		os.Exit(holdOpen(path))
	}
	os.Exit(m.Run())
}

func holdOpen(path string) int {
	s, err := Open(path)
	if err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	fmt.Println("OPEN")
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := s.Close(); err != nil {
		fmt.Println("ERROR", err)
		return 1
	}
	return 0
}

func openStore(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// reopen closes s and opens its file again, as a gateway restart does.
func reopen(t *testing.T, s *Store) *Store {
	t.Helper()
	path := s.file.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return openStore(t, path)
}

// TestOpenCreatesTheLayout: Open makes the data directory, a file only its owner can read,
// every bucket and the schema version; a second Open of the same file keeps them.
func TestOpenCreatesTheLayout(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data", "nested")
	path := filepath.Join(dir, "gateway.db")
	s := openStore(t, path)
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	check := func(s *Store) {
		t.Helper()
		err := s.file.View(func(tx *bolt.Tx) error {
			for _, b := range []string{"meta", "users", "vehicles", "twin", "cmdids"} {
				if tx.Bucket([]byte(b)) == nil {
					return fmt.Errorf("no bucket %q", b)
				}
			}
			v := tx.Bucket([]byte("meta")).Get([]byte("schema_version"))
			if len(v) != 8 || binary.BigEndian.Uint64(v) != SchemaVersion {
				return fmt.Errorf("schema_version %x, want %d as 8 big-endian bytes", v, SchemaVersion)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check(s)
	check(reopen(t, s))
}

// TestOpenRefusesAnotherSchema: a file written by a build with another layout is not read.
func TestOpenRefusesAnotherSchema(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "gateway.db")
	s := openStore(t, path)
	if err := s.PutMeta("schema_version", binary.BigEndian.AppendUint64(nil, SchemaVersion+1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := Open(path)
	want := fmt.Sprintf("schema version %d, this build reads %d", SchemaVersion+1, SchemaVersion)
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open of a newer schema: %v; want an error naming the file and %q", err, want)
	}
	// The refused Open released the file.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 1})
	if err != nil {
		t.Fatalf("file still held after the refused Open: %v", err)
	}
	db.Close()
}

// TestSecondProcessGetsErrLocked: while one process has the store open, another's Open fails
// after its timeout with ErrLocked and a message that says what to check, and succeeds once
// the first has closed it.
func TestSecondProcessGetsErrLocked(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "gateway.db")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			stdin.Close()
			cmd.Wait()
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "OPEN\n" {
		t.Fatalf("holder process: %q, %v", line, err)
	}

	_, err = Open(path)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Open while another process holds the file: %v, want ErrLocked", err)
	}
	for _, want := range []string{path, "in use by another process", "is another gateway running on this data dir?"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}

	stdin.Close()
	exited = true
	if err := cmd.Wait(); err != nil {
		t.Fatalf("holder process: %v", err)
	}
	openStore(t, path)
}

func TestUsers(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	alice := User{Name: "alice", PasswordHash: "$argon2id$a", CreatedMs: 1000}
	if err := s.AddUser(alice); err != nil {
		t.Fatal(err)
	}
	// The same record again is not a conflict (a group commit may run AddUser's function
	// twice); another record under the name is.
	if err := s.AddUser(alice); err != nil {
		t.Fatalf("adding the identical record again: %v", err)
	}
	if err := s.AddUser(User{Name: "alice", PasswordHash: "$argon2id$other"}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), `"alice"`) {
		t.Fatalf("second alice: %v, want ErrExists naming her", err)
	}
	for _, name := range []string{"carol", "bob"} {
		if err := s.AddUser(User{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.GetUser("alice"); err != nil || got != alice {
		t.Fatalf("GetUser: %+v, %v", got, err)
	}
	if _, err := s.GetUser("dave"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"dave"`) {
		t.Fatalf("GetUser of an unknown user: %v", err)
	}
	if names, err := s.UserNames(); err != nil || !reflect.DeepEqual(names, []string{"alice", "bob", "carol"}) {
		t.Fatalf("UserNames: %v, %v", names, err)
	}
	users, err := s.ListUsers()
	if err != nil || len(users) != 3 || users[0] != alice || users[1].Name != "bob" || users[2].Name != "carol" {
		t.Fatalf("ListUsers: %+v, %v", users, err)
	}

	got, err := s.UpdateUser("alice", func(u *User) error {
		u.Disabled = true
		u.TokenGen = NextTokenGen(u.TokenGen, 5000)
		return nil
	})
	if err != nil || !got.Disabled || got.TokenGen != 5000 || got.PasswordHash != alice.PasswordHash {
		t.Fatalf("UpdateUser: %+v, %v", got, err)
	}
	if stored, _ := s.GetUser("alice"); stored != got {
		t.Fatalf("stored %+v, UpdateUser returned %+v", stored, got)
	}
	refuse := errors.New("no")
	if _, err := s.UpdateUser("alice", func(u *User) error { u.Disabled = false; return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("UpdateUser whose change fails: %v", err)
	}
	if stored, _ := s.GetUser("alice"); !stored.Disabled {
		t.Fatal("a change that failed was stored")
	}
	if _, err := s.UpdateUser("dave", func(*User) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("UpdateUser of an unknown user: %v", err)
	}

	// Everything is on disk.
	s = reopen(t, s)
	if stored, err := s.GetUser("alice"); err != nil || stored != got {
		t.Fatalf("after reopening: %+v, %v", stored, err)
	}
}

func TestNextTokenGen(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		gen   uint64
		nowMs int64
		want  uint64
	}{
		{"a new user starts at the clock", 0, 1_700_000_000_000, 1_700_000_000_000},
		{"a generation ahead of the clock moves on by one", 1_800_000_000_000, 1_700_000_000_000, 1_800_000_000_001},
		{"twice in one millisecond still moves on", 1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_001},
		{"a clock before 1970 counts as zero", 7, -5, 8},
	}
	for _, c := range cases {
		if got := NextTokenGen(c.gen, c.nowMs); got != c.want || got <= c.gen {
			t.Errorf("%s: NextTokenGen(%d, %d) = %d, want %d", c.name, c.gen, c.nowMs, got, c.want)
		}
	}
}

// TestDeleteUser: a user with a role on a car is not deleted (the error names the cars);
// the caller's extra work runs in the same transaction and its failure keeps the user.
func TestDeleteUser(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	for _, u := range []string{"alice", "bob"} {
		if err := s.AddUser(User{Name: u}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddVehicles([]Vehicle{{VIN: "VIN00000000000002"}, {VIN: "VIN00000000000001"}}); err != nil {
		t.Fatal(err)
	}
	for _, vin := range []string{"VIN00000000000002", "VIN00000000000001"} {
		if err := s.Assign(vin, "alice", protocol.RoleOwner); err != nil {
			t.Fatal(err)
		}
	}
	err := s.DeleteUser("alice")
	if !errors.Is(err, ErrHasVehicles) || !strings.Contains(err.Error(), "VIN00000000000001, VIN00000000000002") {
		t.Fatalf("deleting an owner: %v, want ErrHasVehicles naming both cars in order", err)
	}
	if err := s.DeleteUser("dave"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting an unknown user: %v", err)
	}

	refuse := errors.New("2fa state not removable")
	if err := s.DeleteUser("bob", func(tx kv.Tx) error { return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("DeleteUser whose extra work fails: %v", err)
	}
	if _, err := s.GetUser("bob"); err != nil {
		t.Fatalf("bob was deleted although the extra work failed: %v", err)
	}
	var sawBob bool
	if err := s.DeleteUser("bob", func(tx kv.Tx) error {
		var err error
		sawBob, err = UserExistsTx(tx, "bob")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !sawBob {
		t.Error("the extra work ran after the user was gone")
	}
	if _, err := s.GetUser("bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob after DeleteUser: %v", err)
	}

	// Once alice holds no role, she goes.
	err = s.Update(t.Context(), func(tx kv.Tx) error {
		for _, vin := range []string{"VIN00000000000001", "VIN00000000000002"} {
			if err := UnassignTx(tx, vin, "alice"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUser("alice"); err != nil {
		t.Fatal(err)
	}
}

func TestVehicles(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	const vinA, vinB, vinC = "VIN0000000000000A", "VIN0000000000000B", "VIN0000000000000C"
	if err := s.AddVehicles([]Vehicle{{VIN: vinB, CreatedMs: 2}, {VIN: vinA, CreatedMs: 1}}); err != nil {
		t.Fatal(err)
	}
	// All or nothing: one known VIN in the list and none of them is added.
	if err := s.AddVehicles([]Vehicle{{VIN: vinC}, {VIN: vinA}}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), vinA) {
		t.Fatalf("adding a known VIN: %v", err)
	}
	if _, err := s.GetVehicle(vinC); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), vinC) {
		t.Fatalf("%s after a refused AddVehicles: %v", vinC, err)
	}
	vs, err := s.ListVehicles()
	if err != nil || len(vs) != 2 || vs[0].VIN != vinA || vs[1].VIN != vinB || vs[0].CreatedMs != 1 {
		t.Fatalf("ListVehicles: %+v, %v", vs, err)
	}

	if err := s.AddUser(User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(vinA, "alice", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	if err := s.Assign(vinA, "alice", protocol.RoleDriver); err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetVehicle(vinA); err != nil || !reflect.DeepEqual(v.Users, map[string]protocol.Role{"alice": protocol.RoleDriver}) {
		t.Fatalf("after assigning twice: %+v, %v (the second role replaces the first)", v, err)
	}
	if err := s.Assign(vinA, "dave", protocol.RoleDriver); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"dave"`) {
		t.Fatalf("assigning an unknown user: %v", err)
	}
	if err := s.Assign(vinC, "alice", protocol.RoleDriver); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), vinC) {
		t.Fatalf("assigning on an unknown car: %v", err)
	}

	if err := s.SetVehicleTokenID(vinB, "jti-2"); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetVehicle(vinB); v.TokenID != "jti-2" || !v.Reissued {
		t.Fatalf("after SetVehicleTokenID: %+v", v)
	}
	if err := s.SetVehicleTokenID(vinC, "jti"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetVehicleTokenID of an unknown car: %v", err)
	}

	// The Tx functions see and make changes inside the caller's transaction.
	err = s.Update(t.Context(), func(tx kv.Tx) error {
		if err := UpdateVehicleTx(tx, vinB, func(v *Vehicle) { v.DecommissionedMs = 9 }); err != nil {
			return err
		}
		v, err := GetVehicleTx(tx, vinB)
		if err != nil {
			return err
		}
		if v.DecommissionedMs != 9 {
			return fmt.Errorf("GetVehicleTx does not see the transaction's own write: %+v", v)
		}
		if _, err := GetVehicleTx(tx, vinC); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("GetVehicleTx of an unknown car: %v", err)
		}
		if err := UpdateVehicleTx(tx, vinC, func(*Vehicle) {}); !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("UpdateVehicleTx of an unknown car: %v", err)
		}
		alice, err := UserExistsTx(tx, "alice")
		if err != nil {
			return err
		}
		dave, err := UserExistsTx(tx, "dave")
		if err != nil {
			return err
		}
		if !alice || dave {
			return errors.New("UserExistsTx")
		}
		return UnassignTx(tx, vinB, "nobody") // nothing to do
	})
	if err != nil {
		t.Fatal(err)
	}

	s = reopen(t, s)
	vs, err = s.ListVehicles()
	want := []Vehicle{
		{VIN: vinA, CreatedMs: 1, Users: map[string]protocol.Role{"alice": protocol.RoleDriver}},
		{VIN: vinB, CreatedMs: 2, TokenID: "jti-2", Reissued: true, DecommissionedMs: 9},
	}
	if err != nil || !reflect.DeepEqual(vs, want) {
		t.Fatalf("after reopening: %+v, %v; want %+v", vs, err, want)
	}
}

// TestStoredRecords: the bytes in the file are the layout of SchemaVersion 1. A file written
// by an earlier build of the same schema must still read, so these names do not change
// without a new schema version.
func TestStoredRecords(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	user := `{"name":"alice","password_hash":"$argon2id$h","created":5,"disabled":true,"token_gen":7}`
	vehicle := `{"vin":"VIN00000000000001","created":5,"users":{"alice":"owner"},"token_id":"j","reissued":true,"decommissioned":8,"credentials_retired":9}`
	twin := `{"vin":"VIN00000000000001","status":"online","status_ts":3,"telemetry_ts":4,"telemetry_seq":6,"signals":{"Vehicle.Speed":12.5}}`
	err := s.Update(t.Context(), func(tx kv.Tx) error {
		for _, r := range []struct{ bucket, key, value string }{
			{"users", "alice", user}, {"vehicles", "VIN00000000000001", vehicle}, {"twin", "VIN00000000000001", twin},
		} {
			if err := tx.Put([]byte(r.bucket), []byte(r.key), []byte(r.value)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := s.GetUser("alice"); err != nil || u != (User{Name: "alice", PasswordHash: "$argon2id$h", CreatedMs: 5, Disabled: true, TokenGen: 7}) {
		t.Errorf("user record: %+v, %v", u, err)
	}
	wantV := Vehicle{VIN: "VIN00000000000001", CreatedMs: 5, Users: map[string]protocol.Role{"alice": protocol.RoleOwner},
		TokenID: "j", Reissued: true, DecommissionedMs: 8, RetiredMs: 9}
	if v, err := s.GetVehicle("VIN00000000000001"); err != nil || !reflect.DeepEqual(v, wantV) {
		t.Errorf("vehicle record: %+v, %v", v, err)
	}
	wantT := []Twin{{VIN: "VIN00000000000001", Status: "online", StatusMs: 3, TelemetryMs: 4, TelemetrySeq: 6,
		Signals: map[string]any{"Vehicle.Speed": 12.5}}}
	if ts, err := s.LoadTwins(); err != nil || !reflect.DeepEqual(ts, wantT) {
		t.Errorf("twin record: %+v, %v", ts, err)
	}

	// And what this build writes reads back as the same bytes.
	if err := s.PutTwins(wantT); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateUser("alice", func(*User) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(t.Context(), func(tx kv.Tx) error { return UpdateVehicleTx(tx, "VIN00000000000001", func(*Vehicle) {}) }); err != nil {
		t.Fatal(err)
	}
	err = s.file.View(func(tx *bolt.Tx) error {
		for _, r := range []struct{ bucket, key, want string }{
			{"users", "alice", user}, {"vehicles", "VIN00000000000001", vehicle}, {"twin", "VIN00000000000001", twin},
		} {
			if got := string(tx.Bucket([]byte(r.bucket)).Get([]byte(r.key))); got != r.want {
				t.Errorf("%s/%s written as\n%s\nwant\n%s", r.bucket, r.key, got, r.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestTwins(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	if err := s.PutTwins(nil); err != nil {
		t.Fatal(err)
	}
	if ts, err := s.LoadTwins(); err != nil || len(ts) != 0 {
		t.Fatalf("LoadTwins of an empty store: %+v, %v", ts, err)
	}
	first := []Twin{
		{VIN: "VIN00000000000002", Status: "offline", StatusMs: 1},
		{VIN: "VIN00000000000001", Status: "online", StatusMs: 2, TelemetryMs: 3, TelemetrySeq: 4,
			Signals: map[string]any{"Vehicle.Speed": 50.0, "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": true}},
	}
	if err := s.PutTwins(first); err != nil {
		t.Fatal(err)
	}
	// A later flush replaces a car's twin whole and leaves the others.
	update := Twin{VIN: "VIN00000000000002", Status: "online", StatusMs: 5}
	if err := s.PutTwins([]Twin{update}); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	ts, err := s.LoadTwins()
	if want := []Twin{first[1], update}; err != nil || !reflect.DeepEqual(ts, want) {
		t.Fatalf("LoadTwins after reopening: %+v, %v; want %+v", ts, err, want)
	}
}

// TestCommandIDs: the ids a restarted gateway still refuses as duplicates, and their pruning.
func TestCommandIDs(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	err := s.Update(t.Context(), func(tx kv.Tx) error {
		for id, until := range map[string]int64{"expired": 100, "due": 200, "live": 300, "far": 10_000} {
			if err := PutCommandID(tx, id, until); err != nil {
				return err
			}
		}
		// A record of another length (not written by this build) is never reported.
		return tx.Put([]byte("cmdids"), []byte("odd"), []byte{1})
	})
	if err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s)
	seen, err := s.SeenCommandIDs(200)
	if want := map[string]int64{"live": 300, "far": 10_000}; err != nil || !reflect.DeepEqual(seen, want) {
		t.Fatalf("SeenCommandIDs(200): %v, %v; want %v", seen, err, want)
	}

	n, err := s.PruneCommandIDs(200, 1_000)
	if err != nil || n != 3 {
		t.Fatalf("PruneCommandIDs: %d, %v; want 3 (expired, due, odd)", n, err)
	}
	seen, err = s.SeenCommandIDs(0)
	if want := map[string]int64{"live": 300, "far": 1_000}; err != nil || !reflect.DeepEqual(seen, want) {
		t.Fatalf("after pruning: %v, %v; want %v (far cut down to the bound)", seen, err, want)
	}
	if n, err := s.PruneCommandIDs(200, 1_000); err != nil || n != 0 {
		t.Fatalf("pruning again: %d, %v", n, err)
	}
}

func TestMeta(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	if v, err := s.GetMeta("signing_key_id"); err != nil || v != nil {
		t.Fatalf("absent key: %q, %v", v, err)
	}
	if err := s.PutMeta("signing_key_id", []byte("k1")); err != nil {
		t.Fatal(err)
	}
	v, err := s.GetMeta("signing_key_id")
	if err != nil || string(v) != "k1" {
		t.Fatalf("GetMeta: %q, %v", v, err)
	}
	v[0] = 'X' // the caller owns the slice: it outlives the transaction
	s = reopen(t, s)
	if v, err := s.GetMeta("signing_key_id"); err != nil || string(v) != "k1" {
		t.Fatalf("after reopening: %q, %v", v, err)
	}
}

// TestConcurrentWritesAllLand: writers that share group commits each get their own record
// stored, and Close waits for what is queued.
func TestConcurrentWritesAllLand(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), "gateway.db"))
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.AddUser(User{Name: fmt.Sprintf("user%02d", i), CreatedMs: int64(i)})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s = reopen(t, s)
	names, err := s.UserNames()
	if err != nil || len(names) != n || names[0] != "user00" || names[n-1] != fmt.Sprintf("user%02d", n-1) {
		t.Fatalf("after %d concurrent AddUser and a reopen: %v, %v", n, names, err)
	}
}
