// Stand-in declaration (see NvInfer.h here): the standard plugin library's initialiser.
#pragma once
extern "C" bool initLibNvInferPlugins(void* logger, char const* libNamespace);
