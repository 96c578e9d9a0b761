package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// vehicle-sim is the cars' and the phones' side: it must not link the gateway. It did, through
// the outage drill (then pkg/drill, which starts a gateway) and the HTTP API's types (then in
// gateway/httpapi); the drill is `gateway drill` now and the types are pkg/api.
func TestLinksNoGatewayPackage(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(goBin); err != nil {
		t.Skipf("no go command at %s to list the dependencies: %v", goBin, err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "telematics/vehicle-sim").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	var linked []string
	for _, p := range strings.Fields(string(out)) {
		if p == "telematics/gateway" || strings.HasPrefix(p, "telematics/gateway/") {
			linked = append(linked, p)
		}
	}
	if len(linked) > 0 {
		t.Fatalf("vehicle-sim links gateway packages: %v", linked)
	}
}
