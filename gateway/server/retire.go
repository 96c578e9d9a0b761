package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/keys"
	"telematics/gateway/kv"
	"telematics/gateway/kv/etcdkv"
	"telematics/gateway/store"
	"telematics/pkg/token"
)

// ErrCarsNotHopped refuses to retire the previous signing key while some car still depends on
// it: retired, the key would lock those cars out (their token would be refused by the broker,
// or they would refuse every whitelist and grant signed by the new key).
var ErrCarsNotHopped = errors.New("some cars have not made the hop to the new signing key")

// ErrNoPreviousKey means there is no rotation to end.
var ErrNoPreviousKey = errors.New("no previous signing key: nothing to retire")

// maxListedVINs bounds the VINs an error lists; the count is always given.
const maxListedVINs = 20

// RetirePreviousKey is `gateway rotate-key --retire-previous`: with the gateway stopped, it
// ends a rotation by deleting the previous signing key (gateway.prev.key, gateway.prev.pub), so
// that the gateway and its embedded broker trust only the current key from their next start,
// and a stolen previous key opens nothing. It refuses (ErrCarsNotHopped, naming the cars) while
// any car has not acknowledged a whitelist signed by the current key, or holds a token that
// the current key did not sign.
func RetirePreviousKey(dir string, out io.Writer) error {
	return RetirePreviousKeyStore(keyCommandConfig(dir), out)
}

// RetirePreviousKeyStore is RetirePreviousKey for the gateway whose key files are in cfg.Data
// and whose state is in the store cfg names (Store, StorePrefix: a bbolt file or etcd).
func RetirePreviousKeyStore(cfg Config, out io.Writer) error {
	dir := cfg.Data
	st, err := openStoppedStore(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	ring, _, err := loadKeyRing(dir)
	if err != nil {
		return err
	}
	if ring.previous == nil {
		return ErrNoPreviousKey
	}
	cur, prev := ring.current.KID(), ring.previous.KID()
	vehicles, err := st.ListVehicles()
	if err != nil {
		return err
	}
	vins := make([]string, 0, len(vehicles))
	var oldToken []string
	for _, v := range vehicles {
		if v.RetiredMs != 0 {
			continue // decommissioned: it will never connect or take a whitelist again
		}
		vins = append(vins, v.VIN)
		// A token id without a key id was issued before ids named their key: which key
		// signed it is unknown, so it counts as the previous one.
		if token.KeyIDOf(v.TokenID) != cur {
			oldToken = append(oldToken, v.VIN)
		}
	}
	notAcked, err := keys.NotOnKey(st.KV(), vins, cur)
	if err != nil {
		return err
	}
	if len(notAcked) > 0 || len(oldToken) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "the previous key %s is kept (of %d cars):", prev, len(vins))
		if len(notAcked) > 0 {
			fmt.Fprintf(&b, "\n  %d have not acknowledged a whitelist signed by the new key %s (start the gateway, bring them online and wait until `gateway admin vehicle list` shows them in sync; a car with no paired key gets an empty whitelist when the gateway starts): %s",
				len(notAcked), cur, listVINs(notAcked))
		}
		if len(oldToken) > 0 {
			fmt.Fprintf(&b, "\n  %d hold a token not signed by the new key (give each new credentials with `gateway admin vehicle reissue VIN` and install them in the car): %s",
				len(oldToken), listVINs(oldToken))
		}
		return fmt.Errorf("%w: %s", ErrCarsNotHopped, b.String())
	}

	// The audit record first: if it cannot be written, nothing is retired.
	log, err := audit.Open(st.KV())
	if err != nil {
		return err
	}
	if err := log.Append(audit.Event{TsMs: time.Now().UnixMilli(), Kind: audit.KindAdmin, Outcome: "signing_key_retired",
		Detail: fmt.Sprintf("kid=%s current=%s cars=%d", prev, cur, len(vins))}); err != nil {
		return err
	}
	for _, name := range []string{PrevSigningKeyFile, PrevPublicKeyFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("retire the previous key: %w", err)
		}
	}
	fmt.Fprintf(out, "previous signing key %s retired: %d cars are on %s; tokens, whitelists and grants signed by %s are refused from the gateway's next start\n",
		prev, len(vins), cur, prev)
	fmt.Fprintf(out, "a standalone broker: restart it with only --gateway-pubkey %s (docker-compose: restart the broker service)\n",
		filepath.Join(dir, PublicKeyFile))
	return nil
}

func listVINs(vins []string) string {
	if len(vins) <= maxListedVINs {
		return strings.Join(vins, ", ")
	}
	return strings.Join(vins[:maxListedVINs], ", ") + fmt.Sprintf(" and %d more", len(vins)-maxListedVINs)
}

// keyCommandConfig is the configuration of rotate-key on dir with the default store.
func keyCommandConfig(dir string) Config {
	cfg := DefaultConfig()
	cfg.Data = dir
	return cfg
}

// openStoppedStore opens the store cfg names for a command that needs the gateway stopped
// and its state present: DATA/gateway.db or a bbolt://PATH must exist (and not be held by a
// running gateway); an etcd prefix must hold a gateway's state. On etcd nothing can tell
// whether replicas run: the operator stops them (docs/OPERATIONS.md).
func openStoppedStore(cfg Config) (*store.Store, error) {
	u, err := ParseStoreURL(cfg.Store)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if u.Etcd == nil {
		if u.BoltPath == "" {
			if err := existingGateway(cfg.Data); err != nil {
				return nil, err
			}
			return openStopped(cfg.Data)
		}
		if _, err := os.Stat(u.BoltPath); err != nil {
			return nil, fmt.Errorf("no gateway store %s: %w", u.BoltPath, err)
		}
		st, err := store.Open(u.BoltPath)
		if errors.Is(err, store.ErrLocked) {
			return nil, fmt.Errorf("stop the gateway first: %w", err)
		}
		return st, err
	}
	kvs, err := etcdkv.Open(etcdkv.Options{Endpoints: u.Etcd, Prefix: cfg.StorePrefix, Timeout: etcdTimeout})
	if err != nil {
		return nil, fmt.Errorf("store %s: %w (is etcd running and reachable?)", cfg.Store, err)
	}
	var schema []byte
	err = kvs.View(context.Background(), func(tx kv.Tx) error {
		v, err := tx.Get([]byte("meta"), []byte("schema_version"))
		schema = v
		return err
	})
	if err == nil && schema == nil {
		err = fmt.Errorf("no gateway state under prefix %s: check --store and --store-prefix", cfg.StorePrefix)
	}
	if err != nil {
		kvs.Close()
		return nil, fmt.Errorf("store %s: %w", cfg.Store, err)
	}
	return store.OpenKV(kvs)
}

// openStopped opens the store in dir for a command that needs the gateway stopped: while a
// gateway runs on dir it holds the file, and the error says to stop it first.
func openStopped(dir string) (*store.Store, error) {
	st, err := store.Open(filepath.Join(dir, DBFile))
	if errors.Is(err, store.ErrLocked) {
		return nil, fmt.Errorf("stop the gateway first: %w", err)
	}
	return st, err
}
