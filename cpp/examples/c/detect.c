/* detect_c MODEL IMAGE [MIN_SCORE]: the deploykit C API from plain C (C99).
 * Prints the detections as the JSON `deploykit infer` writes per image, to stdout.
 * Exit codes: 0 success, 2 bad input (message on stderr), 1 a runtime failure. */
#include <stdio.h>
#include <stdlib.h>

#include <stb_image.h>

#include "../image_check.h"

#include "deploykit/deploykit.h"

static int report(dk_status status) {
    fprintf(stderr, "detect_c: %s\n", dk_last_error());
    return status == DK_ERR_RUNTIME ? 1 : 2;
}

static void print_json_string(const char* s) {
    putchar('"');
    for (; *s; ++s) {
        if (*s == '"' || *s == '\\') printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20) printf("\\u%04x", (unsigned char)*s);
        else putchar(*s);
    }
    putchar('"');
}

int main(int argc, char** argv) {
    dk_options* options = NULL;
    dk_detector* detector = NULL;
    dk_detections* detections = NULL;
    unsigned char* pixels = NULL;
    double min_score = 0.3; /* as deploykit infer and deploykit-detect */
    const char* why = NULL;
    int width = 0, height = 0, code = 0;
    dk_status status;
    dk_image image;
    const dk_detection* d;
    size_t n = 0, i, shown = 0;

    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: detect_c MODEL IMAGE [MIN_SCORE]\n");
        return 2;
    }
    if (argc == 4) min_score = atof(argv[3]);
    pixels = dk_load_image_file(argv[2], &width, &height, &why); /* size and JPEG checks, then stb */
    if (!pixels) {
        fprintf(stderr, "detect_c: image %s: expected a readable image file, got %s\n", argv[2], why);
        return 2;
    }
    if ((status = dk_options_create(&options)) != DK_OK || (status = dk_options_set_threads(options, 2)) != DK_OK ||
        (status = dk_detector_create(argv[1], options, &detector)) != DK_OK) {
        code = report(status);
        goto done;
    }
    image.data = pixels;
    image.width = width;
    image.height = height;
    image.channels = 3;
    image.stride = 0;
    image.format = DK_RGB;
    if ((status = dk_detector_predict(detector, &image, 1, &detections)) != DK_OK) {
        code = report(status);
        goto done;
    }
    d = dk_detections_get(detections, 0, &n);
    printf("{\n  \"image\": ");
    print_json_string(argv[2]);
    printf(",\n  \"width\": %d,\n  \"height\": %d,\n  \"model\": ", width, height);
    print_json_string(argv[1]);
    printf(",\n  \"min_score\": %.17g,\n  \"detections\": [", min_score);
    for (i = 0; i < n; ++i) {
        if (d[i].score < min_score) continue;
        printf("%s\n    {\"box\": [%.9g, %.9g, %.9g, %.9g], \"score\": %.9g, \"label\": %d, \"label_name\": ",
               shown++ ? "," : "", d[i].x1, d[i].y1, d[i].x2, d[i].y2, d[i].score, (int)d[i].label);
        print_json_string(d[i].label_name);
        printf("}");
    }
    printf("%s]\n}\n", shown ? "\n  " : "");
done:
    dk_detections_release(detections);
    dk_detector_destroy(detector);
    dk_options_destroy(options);
    stbi_image_free(pixels);
    return code;
}
