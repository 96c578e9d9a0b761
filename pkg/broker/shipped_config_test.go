package broker

import (
	"path/filepath"
	"reflect"
	"testing"
)

// The shipped configs/broker.yaml must state exactly the defaults.
func TestShippedConfigMatchesDefaults(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "configs", "broker.yaml")
	cfg, err := loadArgs([]string{"--config", path, "--gateway-pubkey", "k.pem"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.GatewayPubKeys = []string{"k.pem"}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("configs/broker.yaml differs from DefaultConfig():\n file: %+v\n code: %+v", cfg, want)
	}
}
