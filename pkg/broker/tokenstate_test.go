package broker

import (
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"telematics/internal/testutil"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/token"
)

// TestStandaloneBrokerRemembersRetiredTokensAcrossRestart: the gateway tells the standalone
// broker that a car's credentials were reissued; the broker is restarted while the gateway is
// away, and it still refuses the car's old token (it used to forget, and admit it again until
// the gateway reconnected). What it reads back is checked: a message a forger wrote into the
// file retires nothing, and a file it cannot parse stops it.
func TestStandaloneBrokerRemembersRetiredTokensAcrossRestart(t *testing.T) {
	t.Parallel()
	signer, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keys := []*ecdsa.PublicKey{signer.Public()}
	clock := newTestClock()
	issuer := token.NewIssuer(signer, clock)
	state := filepath.Join(t.TempDir(), "broker", "state.json")
	start := func() (*Broker, error) {
		t.Helper()
		cfg := testConfig()
		cfg.StateFile = state
		b, err := newBroker(cfg, keys, testLogger(t), clock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		if err := b.FollowCarTokens(keys); err != nil {
			return nil, err
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		return b, nil
	}
	issue := func(sub string, role protocol.Role) (tok, jti string) {
		t.Helper()
		tok, jti, _, err := issuer.IssueID(sub, role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok, jti
	}
	admitted := func(b *Broker, vin, tok string) bool {
		t.Helper()
		code, err := rawConnect(b.MQTTAddr(), protocolV3, creds{vin, vin, tok}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return code == connAccepted
	}
	carToken := func(s *sign.Signer, vin, jti string) []byte {
		t.Helper()
		env, err := s.Seal(protocol.CarToken{V: protocol.Version, VIN: vin, JTI: jti, IssuedAtMs: clock.Now().UnixMilli()})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(env)
		return b
	}
	oldTok, _ := issue(vinA, protocol.RoleVehicle)
	newTok, newJTI := issue(vinA, protocol.RoleVehicle)
	otherTok, _ := issue(vinB, protocol.RoleVehicle)

	b, err := start()
	if err != nil {
		t.Fatal(err)
	}
	// The gateway, over MQTT as in production, names the car's reissued token.
	gwTok, _ := issue("gateway", protocol.RoleGateway)
	gw := mustPaho(t, "tcp://"+b.MQTTAddr(), creds{"gateway", "gateway", gwTok}, nil)
	if tok := gw.Publish(protocol.CarTokenPrefix+vinA, 1, true, carToken(signer, vinA, newJTI)); !tok.WaitTimeout(waitFor) || tok.Error() != nil {
		t.Fatalf("publish the car token: %v", tok.Error())
	}
	testutil.Eventually(t, waitFor, func() error {
		if admitted(b, vinA, oldTok) {
			return errors.New("the retired token is still admitted")
		}
		return nil
	})
	gw.Disconnect(50)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(state); err != nil {
		t.Errorf("no state file after the broker stopped: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}

	// Restarted with the gateway away: the old token stays refused, the new one admitted.
	b, err = start()
	if err != nil {
		t.Fatal(err)
	}
	if admitted(b, vinA, oldTok) {
		t.Fatal("after a restart without the gateway, the retired token is admitted again")
	}
	if !admitted(b, vinA, newTok) || !admitted(b, vinB, otherTok) {
		t.Fatal("a current token is refused after the restart")
	}
	_ = b.Close()

	// A message in the file that the gateway did not sign retires nothing.
	forger, _ := sign.Generate()
	var st tokenStateFile
	raw, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	var forged protocol.Envelope
	_ = json.Unmarshal(carToken(forger, vinB, "planted"), &forged)
	st.CarTokens = append(st.CarTokens, forged)
	raw, _ = json.Marshal(st)
	if err := os.WriteFile(state, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err = start()
	if err != nil {
		t.Fatal(err)
	}
	if !admitted(b, vinB, otherTok) {
		t.Fatal("a car token signed by another key was taken from the state file")
	}
	if admitted(b, vinA, oldTok) {
		t.Fatal("the retired token is admitted")
	}
	_ = b.Close()

	if err := os.WriteFile(state, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := start(); err == nil || !strings.Contains(err.Error(), state) {
		t.Fatalf("a broken state file: %v, want an error naming it", err)
	}
}

// state_file comes from the YAML file, then BROKER_STATE_FILE, then --state-file.
func TestStateFileSetting(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(path, []byte("state_file: yaml.json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--config", path}, nil, "yaml.json"},
		{[]string{"--config", path}, map[string]string{EnvStateFile: "env.json"}, "env.json"},
		{[]string{"--config", path, "--state-file", "flag.json"}, map[string]string{EnvStateFile: "env.json"}, "flag.json"},
	} {
		args := append(tc.args, "--gateway-pubkey", "k.pem")
		cfg, err := loadArgs(args, tc.env)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.StateFile != tc.want {
			t.Errorf("%v %v: state_file %q, want %q", tc.args, tc.env, cfg.StateFile, tc.want)
		}
	}
}
