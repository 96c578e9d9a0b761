package vehicle

import (
	"fmt"
	"testing"

	"telematics/pkg/protocol"
	"telematics/pkg/vehicle/vehicletest"
	"telematics/pkg/whitelist"
)

// BenchmarkVerifyCommand measures what a car does for every command before it executes it:
// whitelist.VerifyCommand against whitelists of several sizes (the signing key last, so Find
// walks the whole list), and the car's whole cloud-path verification (grant signature, binding,
// expiry, phone signature and whitelist, replay lookup) with ~10 keys.
func BenchmarkVerifyCommand(b *testing.B) {
	gw := vehicletest.NewGateway(b)
	owner := gw.Cast.Owner
	for _, n := range []int{1, 10, 100} {
		keys := make([]protocol.WhitelistKey, 0, n)
		for i := 0; i < n-1; i++ {
			keys = append(keys, vehicletest.NewPhone(b, fmt.Sprintf("user%d", i), protocol.RoleDriver, protocol.ChannelCloud, protocol.ChannelLocal).Key)
		}
		keys = append(keys, owner.Key)
		wl := &protocol.Whitelist{V: protocol.Version, VIN: vehicletest.VIN, Version: 1, Keys: keys}
		cmd := vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)
		cmd.Nonce = fuzzNonce
		env := owner.Sign(b, cmd)
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(env.Doc)))
			for b.Loop() {
				if _, _, err := whitelist.VerifyCommand(wl, env, protocol.ChannelLocal, vehicletest.T0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	b.Run("car_cloud_path/keys=10", func(b *testing.B) {
		st := vehicletest.OpenStore(b, b.TempDir())
		car := newTestCar(b, st, gw.Creds(b, vehicletest.VIN), vehicletest.NewClock(vehicletest.T0))
		keys := gw.Cast.Keys()
		for len(keys) < 10 {
			keys = append(keys, vehicletest.NewPhone(b, fmt.Sprintf("user%d", len(keys)), protocol.RoleDriver, protocol.ChannelCloud).Key)
		}
		vehicletest.Install(b, car, gw.Whitelist(b, vehicletest.WhitelistSpec{Keys: keys}))
		payload := gw.CloudCommand(b, vehicletest.CommandSpec{Cmd: vehicletest.NewCommand(vehicletest.VIN, protocol.ActionUnlock, vehicletest.T0)})
		b.ReportAllocs()
		b.SetBytes(int64(len(payload)))
		for b.Loop() {
			car.mu.Lock()
			_, err := car.verify(payload, vehicletest.T0)
			car.mu.Unlock()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
