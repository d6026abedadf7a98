package org.psymatch.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.api.FixedKeyProcessor;
import org.apache.kafka.streams.processor.api.FixedKeyProcessorContext;
import org.apache.kafka.streams.processor.api.FixedKeyRecord;

/**
 * The work of psymatch-bench's runtime phases as a Kafka Streams application:
 * each {@code matching.run} command on {@code <prefix>matching-commands} is
 * read in the Confluent wire format (magic byte, schema id looked up in
 * psymatch's registry, Avro body), checked as the runtime checks an input
 * (wire format, known schema, decodable body, envelope fields, key equal to
 * the payload's patient id, size), and answered with a
 * {@code matching.search_exhausted} event encoded against the registered
 * {@code matching-events} schema, with psymatch's headers, on
 * {@code <prefix>matching-events}.
 *
 * <p>Configured by environment variables (KAFKA_BROKERS, SCHEMA_REGISTRY_URL,
 * BENCH_PREFIX, BENCH_RECORDS, GUARANTEE = at_least_once | exactly_once_v2,
 * APPLICATION_ID). When BENCH_RECORDS inputs are processed and their
 * outputs can be read downstream (read_committed) it prints one JSON line:
 * records, seconds from the first record processed to the last output
 * readable, records/s, peak RSS; then it closes.
 */
public final class StreamsPeer {
    private static final byte MAGIC = 0;
    private static final int MAX_RECORD_BYTES = 1_048_576;

    private final HttpClient http = HttpClient.newHttpClient();
    private final ObjectMapper json = new ObjectMapper();
    private final String registry;
    /** Writer schemas by id, each fetched once. */
    private final Map<Integer, Schema> writers = new ConcurrentHashMap<>();
    private final Schema reader;
    private final Schema output;
    private final Schema exhausted;
    private final int outputId;

    private final AtomicLong processed = new AtomicLong();
    private final AtomicLong refused = new AtomicLong();
    private volatile long firstNanos;

    private StreamsPeer(String registry, String prefix) throws IOException, InterruptedException {
        this.registry = registry.replaceAll("/+$", "");
        this.reader = latest(prefix + "matching-commands-value").schema;
        Registered out = latest(prefix + "matching-events-value");
        this.output = out.schema;
        this.outputId = out.id;
        this.exhausted = output.getField("payload").schema().getTypes().stream()
            .filter(s -> s.getName().equals("SearchExhausted"))
            .findFirst()
            .orElseThrow(() -> new IllegalStateException("matching-events has no SearchExhausted"));
    }

    private record Registered(int id, Schema schema) {}

    private JsonNode get(String path) throws IOException, InterruptedException {
        HttpResponse<String> response = http.send(
            HttpRequest.newBuilder(URI.create(registry + path)).GET().build(),
            HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200) {
            throw new IOException("registry " + path + ": HTTP " + response.statusCode());
        }
        return json.readTree(response.body());
    }

    private Registered latest(String subject) throws IOException, InterruptedException {
        JsonNode answer = get("/subjects/" + URLEncoder.encode(subject, StandardCharsets.UTF_8)
            + "/versions/latest");
        return new Registered(answer.get("id").asInt(), new Schema.Parser().parse(answer.get("schema").asText()));
    }

    private Schema writer(int id) {
        return writers.computeIfAbsent(id, key -> {
            try {
                return new Schema.Parser().parse(get("/schemas/ids/" + key).get("schema").asText());
            } catch (IOException | InterruptedException e) {
                return null;
            }
        });
    }

    /** A stream thread's readers (by writer schema id), writer and buffers, made once. */
    private static final class Codecs {
        final Map<Integer, GenericDatumReader<GenericRecord>> readers = new java.util.HashMap<>();
        GenericDatumWriter<GenericRecord> writer;
        org.apache.avro.io.BinaryDecoder decoder;
        BinaryEncoder encoder;
    }

    private static final ThreadLocal<Codecs> CODECS = ThreadLocal.withInitial(Codecs::new);

    /** Why an input is refused, as the runtime's error codes name it. */
    private static final class Refused extends Exception {
        Refused(String code, String reason) {
            super(code + ": " + reason, null, false, false);
        }
    }

    /** Decodes, checks and answers one input; null when it is refused. */
    byte[] answer(String key, byte[] value, Headers headers) {
        if (firstNanos == 0) {
            firstNanos = System.nanoTime();
        }
        try {
            byte[] out = answerOrRefuse(key, value, headers);
            processed.incrementAndGet();
            return out;
        } catch (Refused | IOException e) {
            refused.incrementAndGet();
            processed.incrementAndGet();
            return null;
        }
    }

    private byte[] answerOrRefuse(String key, byte[] value, Headers headers) throws Refused, IOException {
        if (value == null || value.length < 5 || value[0] != MAGIC) {
            throw new Refused("PSY-D-001", "not the Confluent wire format");
        }
        if (value.length > MAX_RECORD_BYTES) {
            throw new Refused("PSY-D-006", "larger than " + MAX_RECORD_BYTES + " bytes");
        }
        int id = ByteBuffer.wrap(value, 1, 4).getInt();
        Schema writer = writer(id);
        if (writer == null) {
            throw new Refused("PSY-D-002", "schema id " + id + " unknown to the registry");
        }
        GenericRecord envelope;
        Codecs codecs = CODECS.get();
        try {
            GenericDatumReader<GenericRecord> datumReader =
                codecs.readers.computeIfAbsent(id, unused -> new GenericDatumReader<>(writer, reader));
            codecs.decoder = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, codecs.decoder);
            envelope = datumReader.read(null, codecs.decoder);
        } catch (IOException | RuntimeException e) {
            throw new Refused("PSY-D-003", "the body does not decode: " + e.getMessage());
        }
        Object eventId = envelope.get("event_id");
        Object eventType = envelope.get("event_type");
        Object payload = envelope.get("payload");
        if (eventId == null || eventType == null || !(payload instanceof GenericRecord)) {
            throw new Refused("PSY-D-004", "not an envelope");
        }
        UUID input;
        try {
            input = UUID.fromString(eventId.toString());
        } catch (IllegalArgumentException e) {
            throw new Refused("PSY-D-004", "event_id is no uuid");
        }
        GenericRecord run = (GenericRecord) payload;
        Object patient = run.getSchema().getField("patient_id") == null ? null : run.get("patient_id");
        if (patient == null || !patient.toString().equals(key)) {
            throw new Refused("PSY-D-005", "the key is not the payload's patient_id");
        }
        GenericRecord answer = new GenericData.Record(exhausted);
        answer.put("patient_id", patient.toString());
        answer.put("candidates_considered", 1);
        // Deterministic, as the runtime's output ids are: the same input
        // always yields the same event id.
        String outputId = UUID.nameUUIDFromBytes((input + "/emit/0").getBytes(StandardCharsets.UTF_8)).toString();
        GenericRecord event = new GenericData.Record(output);
        event.put("event_id", outputId);
        event.put("event_type", "matching.search_exhausted");
        event.put("version", 1);
        event.put("timestamp", System.currentTimeMillis());
        event.put("producer", "example");
        event.put("correlation_id", envelope.get("correlation_id") == null ? null : envelope.get("correlation_id").toString());
        event.put("payload", answer);
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(128);
        bytes.write(MAGIC);
        bytes.write(ByteBuffer.allocate(4).putInt(this.outputId).array());
        codecs.encoder = EncoderFactory.get().binaryEncoder(bytes, codecs.encoder);
        if (codecs.writer == null) {
            codecs.writer = new GenericDatumWriter<>(output);
        }
        codecs.writer.write(event, codecs.encoder);
        codecs.encoder.flush();
        headers.remove("event_id").remove("event_type").remove("producer");
        headers.add("event_id", outputId.getBytes(StandardCharsets.UTF_8));
        headers.add("event_type", "matching.search_exhausted".getBytes(StandardCharsets.UTF_8));
        headers.add("producer", "example".getBytes(StandardCharsets.UTF_8));
        return bytes.toByteArray();
    }

    private static String env(String name, String fallback) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            if (fallback == null) {
                throw new IllegalArgumentException(name + " is not set");
            }
            return fallback;
        }
        return value;
    }

    private static long peakRssKib() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmHWM:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", ""));
                }
            }
        } catch (IOException | NumberFormatException e) {
            return 0;
        }
        return 0;
    }

    public static void main(String[] args) throws Exception {
        String prefix = env("BENCH_PREFIX", "");
        long records = Long.parseLong(env("BENCH_RECORDS", null));
        String guarantee = env("GUARANTEE", "at_least_once");
        StreamsPeer peer = new StreamsPeer(env("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081"), prefix);

        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(prefix + "matching-commands", Consumed.with(Serdes.String(), Serdes.ByteArray()))
            .processValues(() -> new FixedKeyProcessor<String, byte[], byte[]>() {
                private FixedKeyProcessorContext<String, byte[]> context;

                @Override
                public void init(FixedKeyProcessorContext<String, byte[]> context) {
                    this.context = context;
                }

                @Override
                public void process(FixedKeyRecord<String, byte[]> record) {
                    byte[] out = peer.answer(record.key(), record.value(), record.headers());
                    if (out != null) {
                        context.forward(record.withValue(out));
                    }
                }
            })
            .to(prefix + "matching-events", Produced.with(Serdes.String(), Serdes.ByteArray()));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, env("APPLICATION_ID", "psymatch-bench-streams-" + UUID.randomUUID()));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, env("KAFKA_BROKERS", "127.0.0.1:9092"));
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        // Two threads for the two cores of the machine, as the runtime's
        // two workers; the state directory is unused (no stores).
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 2);
        props.put(StreamsConfig.STATE_DIR_CONFIG, Files.createTempDirectory("streams-peer").toString());
        props.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");
        props.put(StreamsConfig.producerPrefix("linger.ms"), 5);

        CountDownLatch done = new CountDownLatch(1);
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            done.countDown();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        // The clock stops when the last output can be read by a consumer
        // downstream (read_committed: under exactly_once_v2 once its
        // transaction committed), as psymatch's stops when the last batch's
        // outputs are acknowledged and its offsets committed.
        String output = prefix + "matching-events";
        long[] endNanos = new long[1];
        Thread watch = new Thread(() -> {
            Properties c = new Properties();
            c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, env("KAFKA_BROKERS", "127.0.0.1:9092"));
            c.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
            c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
            c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
            try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c)) {
                List<TopicPartition> partitions = consumer.partitionsFor(output).stream()
                    .map(p -> new TopicPartition(output, p.partition()))
                    .toList();
                consumer.assign(partitions);
                consumer.seekToBeginning(partitions);
                long seen = 0;
                while (peer.processed.get() < records || seen < records - peer.refused.get()) {
                    seen += consumer.poll(Duration.ofMillis(50)).count();
                }
                endNanos[0] = System.nanoTime();
            } finally {
                done.countDown();
            }
        });
        watch.setDaemon(true);
        watch.start();
        streams.start();
        done.await();
        double seconds = (endNanos[0] - peer.firstNanos) / 1e9;
        long count = peer.processed.get();
        long rss = peakRssKib();
        streams.close(Duration.ofSeconds(120));
        System.out.printf(
            "{\"phase\": \"kafka-streams-%s\", \"records\": %d, \"seconds\": %.4f, \"per_second\": %.1f, \"peak_rss_kib\": %d, \"refused\": %d}%n",
            guarantee.replace('_', '-'), count, seconds, count / seconds, rss, peer.refused.get());
    }
}
