# One image for every psymatch binary; docker-compose.yml picks the command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The proofs and benchmarks stay out: they bring the test kit.
RUN cargo build --release --bins --workspace --exclude psymatch-proof \
 && mkdir /out \
 && find target/release -maxdepth 1 -type f -executable -name 'psymatch*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
# libssl3: librdkafka's TLS to Kafka is OpenSSL (every other TLS is rustls);
# libcurl4: its OAUTHBEARER/OIDC token requests.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 psymatch
COPY --from=build /out/ /usr/local/bin/
COPY topics.yaml /etc/psymatch/topics.yaml
COPY schemas /etc/psymatch/schemas
COPY processors/email-batcher/templates /etc/psymatch/templates
COPY processors/scheduler/schedule.yaml /etc/psymatch/schedule.yaml
COPY processors/matcher/rules.yaml /etc/psymatch/rules.yaml
ENV TEMPLATES_DIR=/etc/psymatch/templates
USER psymatch
ENTRYPOINT ["/usr/local/bin/psymatch"]
