package server

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"telematics/internal/testutil"
)

func TestParseStoreURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in string
		want     StoreURL
		bad      string // what the error says, "" when in is good
	}{
		{name: "default", in: ""},
		{name: "bbolt", in: "bbolt:///var/lib/gw/state.db", want: StoreURL{BoltPath: "/var/lib/gw/state.db"}},
		{name: "bbolt relative", in: "bbolt://state.db", want: StoreURL{BoltPath: "state.db"}},
		{name: "etcd one", in: "etcd://10.0.0.1:2379", want: StoreURL{Etcd: []string{"http://10.0.0.1:2379"}}},
		{name: "etcd three", in: "etcd://a:2379,b:2379,c:2379",
			want: StoreURL{Etcd: []string{"http://a:2379", "http://b:2379", "http://c:2379"}}},
		{name: "bbolt without path", in: "bbolt://", bad: "names no file"},
		{name: "etcd without port", in: "etcd://a", bad: "HOST:PORT"},
		{name: "etcd empty member", in: "etcd://a:2379,", bad: "HOST:PORT"},
		{name: "etcd bad port", in: "etcd://a:99999", bad: "1..65535"},
		{name: "other scheme", in: "redis://a:6379", bad: "must be bbolt://PATH or etcd://"},
		{name: "a path", in: "/var/lib/gw/gateway.db", bad: "must be bbolt://PATH or etcd://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStoreURL(tc.in)
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("ParseStoreURL(%q) = %+v, %v; want an error saying %q", tc.in, got, err, tc.bad)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseStoreURL(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

// A bad store setting is a configuration error naming the key, from any source.
func TestStoreSettingValidated(t *testing.T) {
	t.Parallel()
	env := map[string]string{"GATEWAY_STORE": "etcd://nowhere"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if _, err := ParseServeFlags(nil, os.Stderr, lookup); err == nil || !strings.Contains(err.Error(), "store:") {
		t.Fatalf("GATEWAY_STORE=etcd://nowhere: %v, want an error naming store", err)
	}
	cfg, err := ParseServeFlags([]string{"--store", "etcd://127.0.0.1:2379"}, os.Stderr, func(string) (string, bool) { return "", false })
	if err != nil || cfg.Store != "etcd://127.0.0.1:2379" || cfg.StorePrefix != "/telematics/" {
		t.Fatalf("--store: %+v, %v", cfg, err)
	}
	cfg = DefaultConfig()
	cfg.StorePrefix = "telematics"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "store_prefix") {
		t.Fatalf("store_prefix without slashes: %v", err)
	}
}

// An etcd that does not answer makes the start fail with an error that says so, within the
// store's bound (no hang).
func TestStartWithUnreachableEtcd(t *testing.T) {
	t.Parallel()
	cfg := DefaultConfig()
	cfg.Data = t.TempDir()
	cfg.Store = "etcd://" + testutil.FreeAddr(t) // nobody listens there
	cfg.HTTPAddr, cfg.MQTTAddr, cfg.WSAddr = "127.0.0.1:0", "127.0.0.1:0", ""
	cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = "127.0.0.1:0", "", "127.0.0.1:0" // not 8883/8443, which another gateway may hold
	done := make(chan error, 1)
	go func() {
		g, err := Start(context.Background(), cfg, Options{})
		if err == nil {
			g.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "is etcd running and reachable") {
			t.Fatalf("start on an unreachable etcd: %v, want an error saying etcd is unreachable", err)
		}
	case <-time.After(60 * time.Second): // a hang detector, far beyond the 5 s bound
		t.Fatal("start on an unreachable etcd did not return")
	}
}
