package whitelist_test

import (
	"crypto/ecdsa"
	"fmt"
	"testing"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

const benchVIN = "WVWZZZ1JZXW000001"

// benchWhitelist builds a whitelist of n phone keys signed by a gateway key, and an unlock
// command signed by its last key (so Find walks the whole list).
func benchWhitelist(b *testing.B, n int) (gw *sign.Signer, wl protocol.Whitelist, env protocol.Envelope, cmdEnv protocol.Envelope) {
	b.Helper()
	gw, err := sign.Generate()
	if err != nil {
		b.Fatal(err)
	}
	wl = protocol.Whitelist{V: protocol.Version, VIN: benchVIN, Version: 7, IssuedAtMs: 1_700_000_000_000}
	var last *sign.Signer
	for i := range n {
		phone, err := sign.Generate()
		if err != nil {
			b.Fatal(err)
		}
		pub, err := sign.EncodePublic(phone.Public())
		if err != nil {
			b.Fatal(err)
		}
		wl.Keys = append(wl.Keys, protocol.WhitelistKey{ID: phone.KID(), Pub: pub, User: fmt.Sprintf("user%d", i),
			Role: protocol.RoleOwner, Channels: []string{protocol.ChannelCloud, protocol.ChannelLocal},
			NotAfterMs: 1_900_000_000_000, Label: "phone"})
		last = phone
	}
	if env, err = whitelist.Sign(gw, wl); err != nil {
		b.Fatal(err)
	}
	cmd := protocol.Command{V: protocol.Version, ID: "0190f3a2-7c1e-7d4b-9a55-3f1c2b4d5e6f", VIN: benchVIN,
		Action: protocol.ActionUnlock, KeyID: last.KID(), User: fmt.Sprintf("user%d", n-1),
		IssuedAtMs: 1_700_000_000_000, ExpiresAtMs: 1_700_000_010_000}
	if cmdEnv, err = last.Seal(cmd); err != nil {
		b.Fatal(err)
	}
	return gw, wl, env, cmdEnv
}

// BenchmarkVerify is a car accepting a new whitelist: the gateway signature over the whole
// document, its decode and the checks, per number of keys on it.
func BenchmarkVerify(b *testing.B) {
	for _, n := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			gw, _, env, _ := benchWhitelist(b, n)
			trusted := []*ecdsa.PublicKey{gw.Public()}
			b.ReportAllocs()
			b.SetBytes(int64(len(env.Doc)))
			for b.Loop() {
				if _, err := whitelist.Verify(env, benchVIN, 6, trusted); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyCommand is the check of a phone-signed command against a whitelist that the
// gateway (cloud path) and the car (both paths) make for every command: decode, key lookup,
// public-key parse, ECDSA verify, key rules.
func BenchmarkVerifyCommand(b *testing.B) {
	now := time.UnixMilli(1_700_000_001_000)
	for _, n := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			_, wl, _, cmdEnv := benchWhitelist(b, n)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := whitelist.VerifyCommand(&wl, cmdEnv, protocol.ChannelCloud, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
