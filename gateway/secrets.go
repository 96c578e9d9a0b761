package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/cmdline"
	"telematics/pkg/devicecert"
	"telematics/pkg/sign"
)

// initSecretsCommand is `gateway init-secrets`: the secrets a cluster's replicas share, made
// once in one directory (docker-compose.cluster.yml's init step; by hand, before copying them
// to every replica's machine).
func initSecretsCommand() *cobra.Command {
	var dir, publicDir, tokenFile string
	cmd := &cobra.Command{
		Use:   "init-secrets",
		Short: "Make the secrets every replica of a cluster shares (signing key, TOTP sealing key, device CA, admin token), once",
		Long: `Makes, in --dir, the secrets that every gateway replica of a cluster must share: gateway.key (the
signing key of tokens, whitelists and grants), totp.key (the key that seals TOTP secrets),
device-ca.key with device-ca.crt (the CA of cars' device certificates) and admin.token (or
--admin-token-file), each 0600, and gateway.pub (the public half, for the broker's
--gateway-pubkey) and device-ca.crt (for the broker's --client-ca) there and in --public-dir. A file that is already there is kept, so running it again changes
nothing; a secret file that group or others may read is refused.

Rotating the signing key of a cluster: with every replica stopped, rename gateway.key to
gateway.prev.key in --dir and run this again: it makes the new gateway.key and writes
gateway.prev.pub beside gateway.pub, so the broker trusts both. Once the previous key is
removed, a run removes gateway.prev.pub.

Each replica then gets gateway.key and the device CA in its data directory (copied), and totp.key and admin.token
through twofa_key_file and admin_token_file (docs/OPERATIONS.md, "Running a cluster").`,
		Example: `  gateway init-secrets --dir /srv/gateway-secrets --public-dir /srv/broker-public`,
		Args:    cobra.NoArgs,
	}
	cmd.Flags().StringVar(&dir, "dir", "", "the `directory` to make the secrets in (made 0700 if missing)")
	cmd.Flags().StringVar(&publicDir, "public-dir", "", "a `directory` to write gateway.pub to as well, for the broker")
	cmd.Flags().StringVar(&tokenFile, "admin-token-file", "", "where to make the admin token instead of DIR/admin.token (for whoever provisions cars, without the keys)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if dir == "" {
			return cmdline.UsageError("--dir is required: the directory to make the secrets in")
		}
		if tokenFile == "" {
			tokenFile = filepath.Join(dir, server.AdminTokenFile)
		}
		return initSecrets(dir, publicDir, tokenFile, cmd.OutOrStdout())
	}
	return cmd
}

func initSecrets(dir, publicDir, tokPath string, out io.Writer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	say := func(path string, made bool) {
		verb := "kept"
		if made {
			verb = "made"
		}
		fmt.Fprintf(out, "%s %s\n", verb, path)
	}
	for _, path := range []string{filepath.Join(dir, server.SigningKeyFile), filepath.Join(dir, server.TOTPKeyFile), filepath.Join(dir, server.DeviceCAKeyFile), tokPath} {
		if err := checkSecret(path); err != nil {
			return err
		}
	}
	signer, made, err := sign.LoadOrCreate(filepath.Join(dir, server.SigningKeyFile))
	if err != nil {
		return err
	}
	say(filepath.Join(dir, server.SigningKeyFile), made)
	totpPath := filepath.Join(dir, server.TOTPKeyFile)
	_, statErr := os.Stat(totpPath)
	if _, err := twofa.LoadOrCreateKey(totpPath); err != nil {
		return err
	}
	say(totpPath, errors.Is(statErr, os.ErrNotExist))
	// One device CA for every replica, so that the broker trusts the certificates any of them
	// issues.
	deviceCA, made, err := devicecert.LoadOrCreate(dir, nil)
	if err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	say(filepath.Join(dir, server.DeviceCAKeyFile), made)
	if _, err := os.Stat(tokPath); errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32) // as the gateway makes its own admin token
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		if err := sign.WriteFileAtomic(tokPath, []byte(hex.EncodeToString(raw)+"\n"), 0o600); err != nil {
			return err
		}
		say(tokPath, true)
	} else if err != nil {
		return err
	} else {
		say(tokPath, false)
	}
	pub, err := sign.PublicPEM(signer.Public())
	if err != nil {
		return err
	}
	// During a rotation (gateway.prev.key beside the new key) the broker trusts both keys:
	// gateway.prev.pub is written too, and removed once the previous key is gone.
	var prevPub []byte
	prevPath := filepath.Join(dir, server.PrevSigningKeyFile)
	if err := checkSecret(prevPath); err != nil {
		return err
	}
	if _, err := os.Stat(prevPath); err == nil {
		prev, _, err := sign.LoadOrCreate(prevPath)
		if err != nil {
			return err
		}
		if prevPub, err = sign.PublicPEM(prev.Public()); err != nil {
			return err
		}
	}
	for _, d := range []string{dir, publicDir} {
		if d == "" {
			continue
		}
		if err := sign.WriteFileAtomic(filepath.Join(d, server.PublicKeyFile), pub, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s\n", filepath.Join(d, server.PublicKeyFile))
		if d != dir { // dir holds it already, made with its key
			if err := sign.WriteFileAtomic(filepath.Join(d, server.DeviceCAFile), deviceCA.CertPEM(), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(out, "wrote %s\n", filepath.Join(d, server.DeviceCAFile))
		}
		prevPubPath := filepath.Join(d, server.PrevPublicKeyFile)
		if prevPub == nil {
			if err := os.Remove(prevPubPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		if err := sign.WriteFileAtomic(prevPubPath, prevPub, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s\n", prevPubPath)
	}
	return nil
}

// checkSecret refuses a secret file that group or others may access (the gateway refuses to
// start with one too).
func checkSecret(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %v: a secret must be 0600 (chmod 600 %s)", path, perm, path)
	}
	return nil
}
