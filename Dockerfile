# One image with the three binaries: gateway, broker, vehicle-sim.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/gateway ./gateway \
 && CGO_ENABLED=0 go build -trimpath -o /out/broker ./broker \
 && CGO_ENABLED=0 go build -trimpath -o /out/vehicle-sim ./vehicle-sim

FROM debian:bookworm-slim
# The compose volumes mount at /data/gateway, /data/public, /data/admin, /data/broker,
# /data/secrets, /data/fleet, /data/sim, /data/ca and /data/tls: made here, so that a new named
# volume takes this owner instead of root (and the mode: the secrets' directories are 0700).
RUN useradd --system --uid 10001 --home /data telematics \
 && mkdir -p /data/gateway /data/public /data/admin /data/broker /data/fleet /data/sim /data/secrets /data/ca /data/tls \
 && chmod 700 /data/gateway /data/admin /data/broker /data/fleet /data/secrets /data/ca /data/tls && chown -R telematics /data
COPY --from=build /out/ /usr/local/bin/
COPY configs/ /etc/telematics/
USER telematics
WORKDIR /data
EXPOSE 8883 8884 8443 1883 1882 8080
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve", "--config", "/etc/telematics/gateway.yaml"]
