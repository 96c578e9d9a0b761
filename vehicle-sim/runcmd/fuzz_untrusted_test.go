package runcmd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"telematics/pkg/protocol"
)

// FuzzCredentialsFile reads arbitrary fleet files (`vehicle-sim run --fleet`, also the shape of
// the gateway's provisioning answer): no panic, and every car of an accepted file can run: a
// well-formed VIN listed once, a client id, a token and the gateway key.
func FuzzCredentialsFile(f *testing.F) {
	good, _ := json.Marshal([]protocol.Credentials{
		{VIN: "1HGCM82633A004352", ClientID: "1HGCM82633A004352", Username: "1HGCM82633A004352", Token: "a.b.c", GatewayKey: "MFkw"},
		{VIN: "2HGCM82633A004352", ClientID: "2HGCM82633A004352", Username: "2HGCM82633A004352", Token: "a.b.c", GatewayKey: "MFkw"},
	})
	f.Add(good)
	f.Add([]byte(`[{"vin":"x"},{"vin":"1HGCM82633A004352"},{"vin":"1HGCM82633A004352"}]`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"error":"unauthenticated"}`))
	path := filepath.Join(f.TempDir(), "fleet.json")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		creds, err := LoadFile(path)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, c := range creds {
			if !protocol.ValidVIN(c.VIN) || c.ClientID == "" || c.Token == "" || c.GatewayKey == "" || seen[c.VIN] {
				t.Fatalf("accepted %+v", c)
			}
			seen[c.VIN] = true
		}
		if len(creds) == 0 {
			t.Fatal("accepted a file with no cars")
		}
	})
}
