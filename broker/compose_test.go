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
		"certs":       {"tls-ca": false, "tls": false},
		"gateway":     {"gateway-data": false, "gateway-public": false, "admin-token": false, "tls": true},
		"broker":      {"gateway-public": true, "broker-data": false, "tls": true},
		"provision":   {"admin-token": true, "gateway-public": true, "fleet": false},
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

// TestComposeRunsWithTLS: every connection that leaves a container is TLS: the broker listens
// with a certificate and no plain text, the gateway serves HTTPS and uses the broker over TLS,
// provisioning verifies HTTPS with the CA, and the cars use ssl://.
func TestComposeRunsWithTLS(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Ports       []string          `yaml:"ports"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	b := compose.Services["broker"].Environment
	if b["BROKER_TLS_CERT"] == "" || b["BROKER_TLS_KEY"] == "" || b["BROKER_MQTT_ADDR"] != "off" || b["BROKER_WS_ADDR"] != "off" {
		t.Errorf("broker environment %v: want a certificate and the plain listeners off", b)
	}
	g := compose.Services["gateway"]
	if args := strings.Join(g.Command, " "); !strings.Contains(args, "ssl://broker:8883") {
		t.Errorf("the gateway does not use the broker over TLS: %s", args)
	}
	if g.Environment["GATEWAY_TLS_HTTP_ADDR"] == "" || !strings.HasPrefix(g.Environment["GATEWAY_HTTP_ADDR"], "127.0.0.1:") ||
		g.Environment["GATEWAY_ALLOW_PLAINTEXT"] != "" {
		t.Errorf("gateway environment %v: want HTTPS outside, plain HTTP on loopback only", g.Environment)
	}
	for name, svc := range compose.Services {
		for _, p := range svc.Ports {
			if port := p[strings.LastIndex(p, ":")+1:]; port != "8443" && port != "8883" && port != "8884" {
				t.Errorf("service %s publishes %s, which is not a TLS port", name, p)
			}
		}
	}
	if p := compose.Services["provision"].Environment; !strings.HasPrefix(p["GATEWAY_ADMIN_SERVER"], "https://") || p["GATEWAY_ADMIN_CA"] == "" {
		t.Errorf("provisioning environment %v: want https:// and the CA", p)
	}
	if args := strings.Join(compose.Services["vehicle-sim"].Command, " "); !strings.Contains(args, "ssl://") {
		t.Errorf("the cars do not use TLS: %s", args)
	}
}
