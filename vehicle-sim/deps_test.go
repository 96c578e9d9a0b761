package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// linkedUntilAPI are the gateway packages vehicle-sim still links through gateway/httpapi's
// wire types (the app and the bench import them); once those types live in pkg/api, this list
// is empty and vehicle-sim links no gateway package at all.
var linkedUntilAPI = []string{
	"telematics/gateway/accounts",
	"telematics/gateway/audit",
	"telematics/gateway/httpapi",
	"telematics/gateway/keys",
	"telematics/gateway/store",
	"telematics/gateway/twofa",
}

// vehicle-sim is the cars' and the phones' side: it must not link the gateway. It did, through
// the outage drill (then pkg/drill, which starts a gateway); the drill is `gateway drill` now.
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
		if (p == "telematics/gateway" || strings.HasPrefix(p, "telematics/gateway/")) && !slices.Contains(linkedUntilAPI, p) {
			linked = append(linked, p)
		}
	}
	if len(linked) > 0 {
		t.Fatalf("vehicle-sim links gateway packages: %v", linked)
	}
}
