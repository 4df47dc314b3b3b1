/*
 * A stand-in for NVIDIA's libnvidia-ml.so, for tests on machines without a GPU.
 *
 * It implements the NVML calls the node's NVML probe makes, with NVML's signatures, struct
 * layouts and error codes, and answers from `nvml-state.txt` in the folder this library was
 * loaded from, read again at every nvmlDeviceGetCount_v2 (the start of each probe reading), so
 * a test can change the GPUs or make the driver fail while the node runs. Lines:
 *
 *   driver VERSION
 *   fail                                  every reading fails: the GPU fell off the bus
 *   gpu UUID TOTAL_MB USED_MB MAJOR MINOR MIG MAX_MIG NAME...
 *   mig SLOT UUID TOTAL_MB USED_MB NAME...   an instance of the gpu line above it
 *
 * MIG instances report no utilisation, temperature, power or compute capability (NVML's
 * NOT_SUPPORTED), as on real hardware for most of these.
 *
 * Built with -DFAKE_NVML_BEFORE_R510 it lacks nvmlDeviceGetMemoryInfo_v2, as drivers before
 * R510 do, and memory reads only through the original nvmlDeviceGetMemoryInfo.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
};

#define MAX_GPUS 16
#define MAX_SLOTS 8
#define MIB (1024ULL * 1024ULL)

struct device {
    char uuid[96];
    char name[96];
    unsigned long long total_mb, used_mb;
    int cc_major, cc_minor;
    unsigned mig, max_mig;
    int instance;
    struct device *slots[MAX_SLOTS];
};
typedef struct device *nvmlDevice_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

static struct device gpus[MAX_GPUS];
static struct device instances[MAX_GPUS * MAX_SLOTS];
static unsigned gpu_count, instance_count;
static char driver[64];
static int initialized, failing;

static void rest_of_line(char *out, size_t size, const char *from) {
    while (*from == ' ') from++;
    snprintf(out, size, "%s", from);
    out[strcspn(out, "\r\n")] = 0;
}

static nvmlReturn_t load_state(void) {
    Dl_info self;
    char path[4096];
    if (!dladdr((void *)load_state, &self) || !self.dli_fname) return NVML_ERROR_GPU_IS_LOST;
    snprintf(path, sizeof path, "%s", self.dli_fname);
    char *slash = strrchr(path, '/');
    size_t folder = slash ? (size_t)(slash - path + 1) : 0;
    snprintf(path + folder, sizeof path - folder, "nvml-state.txt");
    FILE *file = fopen(path, "r");
    if (!file) return NVML_ERROR_GPU_IS_LOST;
    memset(gpus, 0, sizeof gpus);
    memset(instances, 0, sizeof instances);
    gpu_count = instance_count = 0;
    failing = 0;
    snprintf(driver, sizeof driver, "unknown");
    char line[512];
    while (fgets(line, sizeof line, file)) {
        int used = 0;
        if (strncmp(line, "driver ", 7) == 0) {
            rest_of_line(driver, sizeof driver, line + 7);
        } else if (strncmp(line, "fail", 4) == 0) {
            failing = 1;
        } else if (strncmp(line, "gpu ", 4) == 0 && gpu_count < MAX_GPUS) {
            struct device *d = &gpus[gpu_count];
            if (sscanf(line + 4, "%95s %llu %llu %d %d %u %u %n", d->uuid, &d->total_mb,
                       &d->used_mb, &d->cc_major, &d->cc_minor, &d->mig, &d->max_mig, &used) == 7) {
                rest_of_line(d->name, sizeof d->name, line + 4 + used);
                if (d->max_mig > MAX_SLOTS) d->max_mig = MAX_SLOTS;
                gpu_count++;
            }
        } else if (strncmp(line, "mig ", 4) == 0 && gpu_count > 0) {
            struct device *parent = &gpus[gpu_count - 1];
            struct device *d = &instances[instance_count];
            unsigned slot;
            if (sscanf(line + 4, "%u %95s %llu %llu %n", &slot, d->uuid, &d->total_mb,
                       &d->used_mb, &used) == 4 && slot < parent->max_mig) {
                rest_of_line(d->name, sizeof d->name, line + 4 + used);
                d->instance = 1;
                parent->slots[slot] = d;
                instance_count++;
            }
        }
    }
    fclose(file);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) {
    initialized = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    initialized = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (strlen(driver) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(version, driver);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t loaded = load_state();
    if (loaded != NVML_SUCCESS) return loaded;
    if (failing) return NVML_ERROR_GPU_IS_LOST;
    *count = gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (failing) return NVML_ERROR_GPU_IS_LOST;
    if (index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

/* Every driver has the original call; drivers before R510 have only it. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (!device || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->total_mb * MIB;
    memory->used = device->used_mb * MIB;
    memory->free = (device->total_mb - device->used_mb) * MIB;
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_BEFORE_R510
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (!device || !memory) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != (unsigned)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->total_mb * MIB;
    memory->used = device->used_mb * MIB;
    memory->free = (device->total_mb - device->used_mb) * MIB;
    memory->reserved = 0;
    return NVML_SUCCESS;
}
#endif

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_text(device->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    return copy_text(device->name, name, length);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->instance) return NVML_ERROR_NOT_SUPPORTED;
    rates->gpu = device->used_mb > 0 ? 50 : 0;
    rates->memory = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    if (!device || sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->instance) return NVML_ERROR_NOT_SUPPORTED;
    *temp = 41;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->instance) return NVML_ERROR_NOT_SUPPORTED;
    *power = 71000;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->instance) return NVML_ERROR_NOT_SUPPORTED;
    *major = device->cc_major;
    *minor = device->cc_minor;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->instance || device->max_mig == 0) return NVML_ERROR_NOT_SUPPORTED;
    *current = device->mig;
    *pending = device->mig;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    if (!device) return NVML_ERROR_INVALID_ARGUMENT;
    if (device->instance) return NVML_ERROR_NOT_SUPPORTED;
    *count = device->max_mig;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *instance) {
    if (!device || device->instance) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->mig) return NVML_ERROR_NOT_SUPPORTED;
    if (index >= device->max_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (!device->slots[index]) return NVML_ERROR_NOT_FOUND;
    *instance = device->slots[index];
    return NVML_SUCCESS;
}
