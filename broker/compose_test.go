package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestComposeGivesEachServiceOnlyWhatItNeeds: in docker-compose.yml only the gateway mounts its
// data volume (database, signing keys, TOTP sealing key); the broker gets the public keys,
// read-only, and a state volume of its own; the simulator gets its fleet's credentials,
// read-only, and not the admin token; only the one-shot provisioning step sees the admin token.
func TestComposeGivesEachServiceOnlyWhatItNeeds(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Volumes     []string          `yaml:"volumes"`
			Entrypoint  []string          `yaml:"entrypoint"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	// The mounts each service may have: volume -> read-only.
	want := map[string]map[string]bool{
		"gateway":     {"gateway-data": false, "gateway-public": false, "admin-token": false},
		"broker":      {"gateway-public": true, "broker-data": false},
		"provision":   {"admin-token": true, "fleet": false},
		"vehicle-sim": {"fleet": true, "sim-data": false},
	}
	for name, svc := range compose.Services {
		allowed, ok := want[name]
		if !ok {
			t.Errorf("service %s: not known to this test; say what it may mount", name)
			continue
		}
		for _, v := range svc.Volumes {
			parts := strings.Split(v, ":")
			src, ro := parts[0], len(parts) > 2 && parts[2] == "ro"
			mustRO, ok := allowed[src]
			switch {
			case !ok:
				t.Errorf("service %s mounts %s, which it does not need", name, v)
			case mustRO && !ro:
				t.Errorf("service %s mounts %s writable; it only reads it", name, v)
			}
		}
		args := strings.Join(slices.Concat(svc.Entrypoint, svc.Command), " ")
		if name != "gateway" && strings.Contains(args, "/data/gateway") {
			t.Errorf("service %s refers to the gateway's data directory: %s", name, args)
		}
	}
	sim := compose.Services["vehicle-sim"]
	if args := strings.Join(sim.Command, " "); strings.Contains(args, "token-file") || !strings.Contains(args, "--fleet") {
		t.Errorf("the simulator should run its fleet file, without the admin token: %s", args)
	}
	if compose.Services["broker"].Environment["BROKER_STATE_FILE"] == "" {
		t.Error("the broker keeps no state file: a restart would admit retired car tokens")
	}
}
