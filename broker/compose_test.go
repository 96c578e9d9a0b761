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
	compose := readCompose(t, "docker-compose.yml")
	// The mounts each service may have: volume -> read-only.
	want := map[string]map[string]bool{
		"certs":       {"tls-ca": false, "tls": false},
		"gateway":     {"gateway-data": false, "gateway-public": false, "admin-token": false, "tls": true},
		"broker":      {"gateway-public": true, "broker-data": false, "tls": true},
		"provision":   {"admin-token": true, "gateway-public": true, "fleet": false},
		"vehicle-sim": {"fleet": true, "sim-data": false},
	}
	checkMounts(t, compose, want, "gateway")
}

// compose is the part of a compose file these tests read.
type compose struct {
	Services map[string]struct {
		Volumes     []string          `yaml:"volumes"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
	} `yaml:"services"`
}

func readCompose(t *testing.T, file string) compose {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", file))
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkMounts: each service mounts only the volumes want allows it, read-only where want
// says so; only the gateways refer to the gateway's data directory; the simulator runs its
// fleet file without the admin token; the broker keeps its state.
func checkMounts(t *testing.T, compose compose, want map[string]map[string]bool, gateways ...string) {
	t.Helper()
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
		if !slices.Contains(gateways, name) && strings.Contains(args, "/data/gateway") {
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

// TestComposeClusterGivesEachServiceOnlyWhatItNeeds: docker-compose.cluster.yml keeps the same
// rules for a cluster: the shared signing and TOTP sealing keys only in the one-shot secrets
// step (writing) and the replicas (read-only); the admin token also in the provisioning step,
// read-only; each etcd member and each replica its own data volume. Each replica runs on the
// standalone broker with the etcd store of all three members, which form one cluster.
func TestComposeClusterGivesEachServiceOnlyWhatItNeeds(t *testing.T) {
	compose := readCompose(t, "docker-compose.cluster.yml")
	want := map[string]map[string]bool{
		"certs":       {"tls-ca": false, "tls": false},
		"etcd-1":      {"etcd-1-data": false},
		"etcd-2":      {"etcd-2-data": false},
		"etcd-3":      {"etcd-3-data": false},
		"secrets":     {"gateway-secrets": false, "admin-token": false, "gateway-public": false},
		"gateway-1":   {"gateway-secrets": true, "admin-token": true, "gateway-1-data": false, "gateway-public": false, "tls": true},
		"gateway-2":   {"gateway-secrets": true, "admin-token": true, "gateway-2-data": false, "gateway-public": false, "tls": true},
		"broker":      {"gateway-public": true, "broker-data": false, "tls": true},
		"provision":   {"admin-token": true, "gateway-public": true, "fleet": false},
		"vehicle-sim": {"fleet": true, "sim-data": false},
	}
	checkMounts(t, compose, want, "gateway-1", "gateway-2")
	members := []string{"etcd-1", "etcd-2", "etcd-3"}
	for _, m := range members {
		args := strings.Join(compose.Services[m].Command, " ")
		for _, peer := range members {
			if !strings.Contains(args, peer+"=http://"+peer+":2380") {
				t.Errorf("%s: --initial-cluster does not name %s: %s", m, peer, args)
			}
		}
		for _, flag := range []string{"--auto-compaction-retention=", "--quota-backend-bytes=", "--max-txn-ops=128"} {
			if !strings.Contains(args, flag) {
				t.Errorf("%s: no %s (docs/OPERATIONS.md, \"Running a cluster\")", m, flag)
			}
		}
	}
	for _, name := range []string{"gateway-1", "gateway-2"} {
		svc := compose.Services[name]
		args := strings.Join(svc.Command, " ")
		if !strings.Contains(args, "--external-broker ssl://broker:8883") ||
			!strings.Contains(args, "--store etcd://etcd-1:2379,etcd-2:2379,etcd-3:2379") {
			t.Errorf("%s is not a replica on the broker and all of etcd: %s", name, args)
		}
		if !strings.HasPrefix(svc.Environment["GATEWAY_TWOFA_KEY_FILE"], "/data/secrets/") ||
			!strings.HasPrefix(svc.Environment["GATEWAY_ADMIN_TOKEN_FILE"], "/data/admin/") {
			t.Errorf("%s does not read the shared TOTP sealing key and admin token: %v", name, svc.Environment)
		}
		if svc.Environment["GATEWAY_AUDIT_MAX_RECORDS"] == "" {
			t.Errorf("%s keeps the audit log's default bound, which does not fit etcd's quota", name)
		}
		if entry := strings.Join(svc.Entrypoint, " "); !strings.Contains(entry, "cp /data/secrets/gateway.key /data/gateway/gateway.key") {
			t.Errorf("%s does not take the shared signing key: %s", name, entry)
		}
		if entry := strings.Join(svc.Entrypoint, " "); !strings.Contains(entry, "cp /data/secrets/device-ca.crt /data/secrets/device-ca.key /data/gateway/") {
			t.Errorf("%s does not take the shared device CA (the broker trusts one): %s", name, entry)
		}
	}
}

// TestComposeRunsWithTLS: in docker-compose.yml and docker-compose.cluster.yml every
// connection that leaves a container is TLS: the broker listens with a certificate and no
// plain text, and trusts the gateway's device CA (the certificate the gateway writes to its
// public directory) for cars' device certificates; every gateway serves HTTPS and uses the
// broker over TLS, provisioning verifies HTTPS with the CA, and the cars use ssl://.
func TestComposeRunsWithTLS(t *testing.T) {
	for file, gateways := range map[string][]string{
		"docker-compose.yml":         {"gateway"},
		"docker-compose.cluster.yml": {"gateway-1", "gateway-2"},
	} {
		t.Run(file, func(t *testing.T) { checkComposeTLS(t, file, gateways) })
	}
}

func checkComposeTLS(t *testing.T, file string, gateways []string) {
	raw, err := os.ReadFile(filepath.Join("..", file))
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Entrypoint  []string          `yaml:"entrypoint"`
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
	if b["BROKER_CLIENT_CA"] != "/data/public/device-ca.crt" {
		t.Errorf("broker environment %v: want BROKER_CLIENT_CA on the device CA of the public directory", b)
	}
	// The broker cannot start before the file is there: it waits for it as for gateway.pub.
	if entry := strings.Join(compose.Services["broker"].Entrypoint, " "); !strings.Contains(entry, "[ -s /data/public/device-ca.crt ]") {
		t.Errorf("the broker does not wait for the device CA certificate: %s", entry)
	}
	for _, name := range gateways {
		g := compose.Services[name]
		if args := strings.Join(g.Command, " "); !strings.Contains(args, "ssl://broker:8883") {
			t.Errorf("%s does not use the broker over TLS: %s", name, args)
		}
		if g.Environment["GATEWAY_TLS_HTTP_ADDR"] == "" || !strings.HasPrefix(g.Environment["GATEWAY_HTTP_ADDR"], "127.0.0.1:") ||
			g.Environment["GATEWAY_ALLOW_PLAINTEXT"] != "" || !strings.HasPrefix(g.Environment["GATEWAY_ADVERTISE_MQTT_URL"], "ssl://") {
			t.Errorf("%s environment %v: want HTTPS outside, plain HTTP on loopback only, cars sent to ssl://", name, g.Environment)
		}
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
