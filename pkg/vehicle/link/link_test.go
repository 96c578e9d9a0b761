package link_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"telematics/pkg/protocol"
	"telematics/pkg/vehicle"
	"telematics/pkg/vehicle/link"
	"telematics/pkg/vehicle/link/linktest"
	"telematics/pkg/vehicle/vehicletest"
	"testing"
)

func TestLinkHTTPErrors(t *testing.T) {
	gw := vehicletest.NewGateway(t)
	r := linktest.NewRig(t, gw, vehicletest.NewClock(vehicletest.T0), t.TempDir(), false)
	valid := func() []byte {
		return gw.LocalRequest(t, vehicletest.CommandSpec{Cmd: r.LocalCommand(t, vehicletest.VIN, protocol.ActionUnlock)})
	}
	tests := []struct {
		name   string
		method string
		path   string
		body   []byte
		code   int
		reason protocol.Reason
	}{
		{"car not run here", http.MethodPost, "/v1/link/WVWZZZ1JZXW000999/command", valid(), http.StatusNotFound, protocol.ReasonVehicleUnknown},
		{"challenge of a car not run here", http.MethodPost, "/v1/link/WVWZZZ1JZXW000999/challenge", nil, http.StatusNotFound, protocol.ReasonVehicleUnknown},
		{"malformed vin", http.MethodPost, "/v1/link/not-a-vin/challenge", nil, http.StatusBadRequest, protocol.ReasonBadRequest},
		{"not json", http.MethodPost, "/v1/link/" + vehicletest.VIN + "/command", []byte("open sesame"), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"empty body", http.MethodPost, "/v1/link/" + vehicletest.VIN + "/command", nil, http.StatusBadRequest, protocol.ReasonBadRequest},
		{"no command", http.MethodPost, "/v1/link/" + vehicletest.VIN + "/command", []byte(`{"v":1}`), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"wrong version", http.MethodPost, "/v1/link/" + vehicletest.VIN + "/command", []byte(`{"v":2,"command":{"doc":"e30"}}`), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"oversized", http.MethodPost, "/v1/link/" + vehicletest.VIN + "/command",
			append([]byte(`{"v":1,"pad":"`), bytes.Repeat([]byte("a"), protocol.MaxPayloadBytes)...), http.StatusBadRequest, protocol.ReasonBadRequest},
		{"get", http.MethodGet, "/v1/link/" + vehicletest.VIN + "/challenge", nil, http.StatusMethodNotAllowed, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, r.Link.URL()+tc.path, bytes.NewReader(tc.body))
			resp, err := r.Client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error   protocol.Reason `json:"error"`
				Message string          `json:"message"`
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, b, tc.code)
			}
			if tc.reason != "" {
				if err := json.Unmarshal(b, &e); err != nil || e.Error != tc.reason || e.Message == "" {
					t.Fatalf("body %s, want error %q with a message", b, tc.reason)
				}
			}
		})
	}
	if n := len(vehicletest.Journal(t, r.Store, vehicletest.VIN)); n != 0 {
		t.Errorf("requests that reached no car were journaled (%d entries)", n)
	}
	if !r.Car.State().Locked {
		t.Error("the car was unlocked")
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1884": true, "127.0.0.1:0": true, "[::1]:1884": true, "localhost:1884": true, "127.1.2.3:9": true,
		":1884": false, "0.0.0.0:1884": false, "192.168.1.10:1884": false, "example.com:1884": false, "127.0.0.1": false, "": false,
	} {
		if err := link.CheckAddr(addr); (err == nil) != ok {
			t.Errorf("%q: %v", addr, err)
		}
	}
	l := link.NewServer(vehicle.NewGarage(), nil)
	if err := l.Start("0.0.0.0:0"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("Start on every interface: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}
