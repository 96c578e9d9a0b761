package server

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"telematics/pkg/sign"
)

// Files of a signing-key rotation.
const (
	PrevSigningKeyFile = "gateway.prev.key" // the key before the last rotation, 0600
	PrevPublicKeyFile  = "gateway.prev.pub"
)

// keyRing is the gateway's signing keys: the current one signs everything new; the previous
// one (after a rotation) still verifies tokens it signed and signs whitelists and grants for
// cars that have not yet learned the new key.
type keyRing struct {
	current  *sign.Signer
	previous *sign.Signer
}

func (k *keyRing) Current() *sign.Signer  { return k.current }
func (k *keyRing) Previous() *sign.Signer { return k.previous }

// publicKeys are the keys tokens may be signed with.
func (k *keyRing) publicKeys() []*ecdsa.PublicKey {
	keys := []*ecdsa.PublicKey{k.current.Public()}
	if k.previous != nil {
		keys = append(keys, k.previous.Public())
	}
	return keys
}

func loadKeyRing(dir string) (*keyRing, bool, error) {
	for _, name := range []string{SigningKeyFile, PrevSigningKeyFile} {
		if err := checkSecretFile(filepath.Join(dir, name)); err != nil {
			return nil, false, err
		}
	}
	cur, created, err := sign.LoadOrCreate(filepath.Join(dir, SigningKeyFile))
	if err != nil {
		return nil, false, err
	}
	ring := &keyRing{current: cur}
	prevPath := filepath.Join(dir, PrevSigningKeyFile)
	if _, err := os.Stat(prevPath); err == nil {
		if ring.previous, _, err = sign.LoadOrCreate(prevPath); err != nil {
			return nil, false, err
		}
	}
	return ring, created, nil
}

// RotateSigningKey is `gateway rotate-key`: with the gateway stopped, the current signing key
// becomes the previous one and a new key is made. On its next start the gateway re-signs every
// car's whitelist with the previous key, naming the new key as trusted; each car that
// acknowledges it is moved onto whitelists and grants signed by the new key. No car is
// re-provisioned: tokens signed by the previous key stay valid (the broker trusts both keys;
// give the standalone broker --gateway-pubkey for gateway.pub and gateway.prev.pub).
func RotateSigningKey(dir string, out io.Writer) error {
	return RotateSigningKeyStore(keyCommandConfig(dir), out)
}

// RotateSigningKeyStore is RotateSigningKey for the gateway whose key files are in cfg.Data
// and whose state is in the store cfg names (Store, StorePrefix: a bbolt file or etcd).
func RotateSigningKeyStore(cfg Config, out io.Writer) error {
	dir := cfg.Data
	st, err := openStoppedStore(cfg)
	if err != nil {
		return err
	}
	st.Close()
	curPath := filepath.Join(dir, SigningKeyFile)
	cur, err := os.ReadFile(curPath)
	if err != nil {
		return fmt.Errorf("no signing key to rotate in %s: %w", dir, err)
	}
	if err := sign.WriteFileAtomic(filepath.Join(dir, PrevSigningKeyFile), cur, 0o600); err != nil {
		return err
	}
	if err := os.Remove(curPath); err != nil {
		return err
	}
	ring, _, err := loadKeyRing(dir)
	if err != nil {
		return err
	}
	if err := writePublicKeys(dir, ring); err != nil {
		return err
	}
	fmt.Fprintf(out, "new signing key %s; previous key %s kept in %s\n", ring.current.KID(), ring.previous.KID(), PrevSigningKeyFile)
	fmt.Fprintf(out, "a standalone broker: restart it with --gateway-pubkey %s --gateway-pubkey %s (else it refuses the gateway's new token)\n",
		filepath.Join(dir, PublicKeyFile), filepath.Join(dir, PrevPublicKeyFile))
	fmt.Fprintf(out, "start the gateway: it moves every car to the new key as the car acknowledges (see `gateway admin vehicle list`)\n")
	return nil
}

func writePublicKeys(dir string, ring *keyRing) error {
	pub, err := sign.PublicPEM(ring.current.Public())
	if err != nil {
		return err
	}
	if err := sign.WriteFileAtomic(filepath.Join(dir, PublicKeyFile), pub, 0o644); err != nil {
		return err
	}
	if ring.previous != nil {
		prev, err := sign.PublicPEM(ring.previous.Public())
		if err != nil {
			return err
		}
		return sign.WriteFileAtomic(filepath.Join(dir, PrevPublicKeyFile), prev, 0o644)
	}
	// No rotation under way (any more): a broker that reads this directory must not be
	// offered a retired key.
	if err := os.Remove(filepath.Join(dir, PrevPublicKeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// finishRotationStart re-signs whitelists once after a rotation, and at every start of a
// rotation gives the cars that have none an empty one (a car provisioned since has none either,
// and retiring the previous key waits for every car).
func (g *Gateway) finishRotationStart(ctx context.Context) error {
	if g.ring.previous == nil {
		return nil
	}
	done, err := g.store.GetMeta("rotated_to")
	if err != nil {
		return err
	}
	if string(done) != g.ring.current.KID() {
		if err := g.keys.Rotate(ctx); err != nil {
			return fmt.Errorf("re-sign whitelists for the new signing key: %w", err)
		}
		if err := g.store.PutMeta("rotated_to", []byte(g.ring.current.KID())); err != nil {
			return err
		}
	}
	if _, err := g.keys.WhitelistUnpaired(ctx); err != nil {
		return fmt.Errorf("give unpaired cars a whitelist for the new signing key: %w", err)
	}
	return nil
}
