package runcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle/carstore"
	"telematics/vehicle-sim/config"
)

// fakeGateway answers POST /v1/admin/vehicles like the gateway: made-up VINs, credentials.
type fakeGateway struct {
	token    string
	gwKey    string
	requests atomic.Int64
	next     atomic.Int64
}

func newFakeGateway(t *testing.T) (*fakeGateway, *httptest.Server) {
	s, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := sign.EncodePublic(s.Public())
	g := &fakeGateway{token: "admin-secret", gwKey: pub}
	srv := httptest.NewServer(http.HandlerFunc(g.serve))
	t.Cleanup(srv.Close)
	return g, srv
}

func (g *fakeGateway) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/admin/vehicles" {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+g.token {
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]string{"error": "unauthenticated", "message": "missing or wrong admin token"})
		return
	}
	g.requests.Add(1)
	var req struct {
		Count int `json:"count"`
	}
	json.NewDecoder(r.Body).Decode(&req)
	out := make([]protocol.Credentials, req.Count)
	for i := range out {
		vin := vinN(int(g.next.Add(1)))
		out[i] = protocol.Credentials{VIN: vin, ClientID: vin, Username: vin, Token: "tok", GatewayKey: g.gwKey}
	}
	w.WriteHeader(http.StatusCreated)
	json.NewEncoder(w).Encode(out)
}

func vinN(n int) string { return fmt.Sprintf("WVWZZZ1JZXW%06d", n) }

func TestProvisionedOnceAndReused(t *testing.T) {
	g, srv := newFakeGateway(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(tokenFile, []byte(g.token+"\n"), 0o600)
	cfg := config.Default()
	cfg.Gateway, cfg.TokenFile, cfg.DataDir = srv.URL, tokenFile, dir

	open := func() *carstore.Store {
		st, err := carstore.Open(filepath.Join(dir, carstore.File))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := open()
	cfg.Run.Cars = ProvisionBatch + 3 // two requests
	creds, err := provisioned(context.Background(), st, cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != cfg.Run.Cars || g.requests.Load() != 2 {
		t.Fatalf("%d cars in %d requests", len(creds), g.requests.Load())
	}
	st.Close()

	// A restart reuses them; asking for more provisions only the difference.
	st = open()
	defer st.Close()
	again, err := provisioned(context.Background(), st, cfg, Options{})
	if err != nil || len(again) != len(creds) || g.requests.Load() != 2 {
		t.Fatalf("restart: %d cars, %d requests, %v", len(again), g.requests.Load(), err)
	}
	cfg.Run.Cars += 2
	more, err := provisioned(context.Background(), st, cfg, Options{})
	if err != nil || len(more) != cfg.Run.Cars || g.requests.Load() != 3 {
		t.Fatalf("top-up: %d cars, %d requests, %v", len(more), g.requests.Load(), err)
	}
}

func TestProvisionErrors(t *testing.T) {
	_, srv := newFakeGateway(t)
	tests := []struct {
		name, gateway, token, want string
	}{
		{"wrong token", srv.URL, "nope", "401"},
		{"wrong token hint", srv.URL, "nope", "missing or wrong admin token"},
		{"no gateway", "http://127.0.0.1:1", "x", "is `gateway serve` running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Provision(context.Background(), http.DefaultClient, tc.gateway, tc.token, 1)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLoadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	good := `[{"vin":"WVWZZZ1JZXW000001","client_id":"WVWZZZ1JZXW000001","username":"WVWZZZ1JZXW000001","token":"t","gateway_key":"k"}]`
	tests := []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope.json"), "read fleet file"},
		{"not json", write("bad.json", "vin,token\n"), "not a JSON list of credentials"},
		{"empty list", write("empty.json", "[]"), "lists no cars"},
		{"incomplete", write("inc.json", `[{"vin":"WVWZZZ1JZXW000001"}]`), "lacks client_id, token, gateway_key"},
		{"twice", write("twice.json", "["+good[1:len(good)-1]+","+good[1:len(good)-1]+"]"), "listed twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadFile(tc.path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	creds, err := LoadFile(write("good.json", good))
	if err != nil || len(creds) != 1 {
		t.Fatalf("good file: %v %v", creds, err)
	}
}

// TestFleetFileLowercaseVINNormalised: a fleet file with a VIN in lower case (typed by hand)
// runs the car under its VIN in capitals, as the gateway issued it, instead of refusing it.
func TestFleetFileLowercaseVINNormalised(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fleet.json")
	lower := "wvwzzz1jzxw000001"
	body := `[{"vin":"` + lower + `","client_id":"` + lower + `","username":"` + lower + `","token":"t","gateway_key":"k"}]`
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	creds, err := LoadFile(p)
	want := strings.ToUpper(lower)
	if err != nil || len(creds) != 1 || creds[0].VIN != want || creds[0].ClientID != want || creds[0].Username != want {
		t.Fatalf("got %+v, %v; want every name %s", creds, err, want)
	}
}

// TestProgressCountsInTheSingular: one car is "1 car", not "1 cars", when provisioning and
// when running.
func TestProgressCountsInTheSingular(t *testing.T) {
	g, srv := newFakeGateway(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "admin.token")
	os.WriteFile(tokenFile, []byte(g.token+"\n"), 0o600)
	cfg := config.Default()
	cfg.Gateway, cfg.TokenFile, cfg.DataDir, cfg.LinkAddr = srv.URL, tokenFile, dir, "off"
	cfg.Run.Cars = 1
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The cars need not connect: the run stops once it said how many it runs.
	out := &cancelOn{w: &bytes.Buffer{}, text: "running ", cancel: cancel}
	_ = Run(ctx, cfg, Options{Progress: out})
	for _, want := range []string{"provisioning 1 car through", "running 1 car against"} {
		if !strings.Contains(out.w.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, out.w.String())
		}
	}
}

// cancelOn is a writer that calls cancel once text was written.
type cancelOn struct {
	mu     sync.Mutex
	w      *bytes.Buffer
	text   string
	cancel func()
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.w.Write(p)
	if strings.Contains(c.w.String(), c.text) {
		c.cancel()
	}
	return n, err
}
