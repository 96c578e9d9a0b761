package etcdrun_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"telematics/internal/etcdrun"
)

// put writes a key through etcd's v3 JSON gateway (present in 3.4 and later) and reads it back,
// so the test needs no client of its own.
func putGet(t *testing.T, endpoint string) {
	t.Helper()
	// "a2V5" is base64("key"), "dmFsdWU=" base64("value").
	resp, err := http.Post(endpoint+"/v3/kv/put", "application/json", strings.NewReader(`{"key":"a2V5","value":"dmFsdWU="}`))
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("put: %s", resp.Status)
	}
	resp, err = http.Post(endpoint+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"a2V5"}`))
	if err != nil {
		t.Fatalf("range: %v", err)
	}
	defer resp.Body.Close()
	b := make([]byte, 4096)
	n, _ := resp.Body.Read(b)
	if !strings.Contains(string(b[:n]), "dmFsdWU=") {
		t.Fatalf("range: the value written is not there: %s", b[:n])
	}
}

func TestStart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    string
		members int
	}{
		{"embedded one member", etcdrun.ModeEmbedded, 1},
		{"embedded three members", etcdrun.ModeEmbedded, 3},
		{"binary one member", etcdrun.ModeBinary, 1},
		{"binary three members", etcdrun.ModeBinary, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.mode == etcdrun.ModeBinary {
				if _, err := etcdrun.FindBinary(); err != nil {
					t.Skipf("%v", err)
				}
			}
			dir := t.TempDir()
			c, err := etcdrun.Start(context.Background(), etcdrun.Options{Dir: dir, Members: tc.members, Mode: tc.mode, NoFsync: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			if c.Mode() != tc.mode || len(c.Endpoints()) != tc.members {
				t.Fatalf("mode %q endpoints %v: want %q and %d", c.Mode(), c.Endpoints(), tc.mode, tc.members)
			}
			wantPIDs := 0
			if tc.mode == etcdrun.ModeBinary {
				wantPIDs = tc.members
			}
			if len(c.PIDs()) != wantPIDs {
				t.Fatalf("%d member processes, want %d", len(c.PIDs()), wantPIDs)
			}
			for _, e := range c.Endpoints() {
				putGet(t, e)
			}
			if u := c.StoreURL(); !strings.HasPrefix(u, "etcd://127.0.0.1:") || strings.Count(u, ",") != tc.members-1 {
				t.Fatalf("StoreURL %q", u)
			}
			if tc.members == 3 {
				// One member down: the other two keep a quorum and take writes.
				if err := c.StopMember(0); err != nil {
					t.Fatal(err)
				}
				putGet(t, c.Endpoints()[1])
			}
			if err := c.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if err := c.Close(); err != nil {
				t.Fatalf("second close: %v", err)
			}
			if _, err := http.Get(c.Endpoints()[len(c.Endpoints())-1] + "/health"); err == nil {
				t.Fatal("etcd still answers after Close")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != tc.members {
				t.Fatalf("data directory holds %d entries, want one per member", len(entries))
			}
		})
	}
}

func TestBinaryModeWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := etcdrun.Start(context.Background(), etcdrun.Options{Dir: t.TempDir(), Mode: etcdrun.ModeBinary})
	if !errors.Is(err, etcdrun.ErrNoBinary) {
		t.Fatalf("err %v, want ErrNoBinary", err)
	}
}

func TestAutoModeFallsBackToEmbedded(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	c, err := etcdrun.Start(context.Background(), etcdrun.Options{Dir: t.TempDir(), NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Mode() != etcdrun.ModeEmbedded {
		t.Fatalf("mode %q without an etcd in PATH, want embedded", c.Mode())
	}
	putGet(t, c.Endpoints()[0])
}

func TestStartRefusesNoDir(t *testing.T) {
	if _, err := etcdrun.Start(context.Background(), etcdrun.Options{Mode: etcdrun.ModeEmbedded}); err == nil {
		t.Fatal("started without a data directory")
	}
}
